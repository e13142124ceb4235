//! Gantry's Wasm plugin host: unmodified proxy-wasm plugins (ABI 0.2.1, and 0.2.0
//! modules) on wasmtime, treated as untrusted code.
//!
//! The gateway drives plugins through a small per-phase contract that knows
//! nothing of Pingora: [`Plugin::start_request`] gives an [`HttpContext`], whose
//! `on_request_headers`, `on_request_body`, `on_response_headers` and
//! `on_response_body` take the request's parts, let the plugin read and change
//! them, and return a [`Decision`]: continue, or answer locally.
//!
//! Limits ([`PluginLimits`], every one with a default): CPU per hook call (epoch
//! interruption, a ticker thread advances the epoch every millisecond), memory per
//! instance (`memory.grow` past it fails), bytes copied across the boundary per
//! host call, headers added per request, module size. Breaking one traps; a trap
//! discards the instance, and the caller applies the plugin's failure policy.
//!
//! Instances are compiled once ([`wasmtime::InstancePre`]), allocated from the
//! pooling allocator, and reused across requests: a request checks one out for its
//! lifetime (root context configured once per instance, one HTTP context per
//! request), so a healthy plugin costs no compilation or instantiation per request.

pub mod abi;
mod cpu;
mod host;
mod shared;

pub use cpu::WALL_FACTOR;

pub use shared::{
    Metric, MetricKind, Shared, MAX_LOG_LINE_BYTES, MAX_METRIC_NAME_BYTES, SHARED_DATA_ENTRY_BYTES,
};

use host::{HostState, HttpState, LimitTrap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, StoreLimitsBuilder, TypedFunc,
};

use gantry_config::file::{
    DEFAULT_PLUGIN_BYTES_PER_HOST_CALL as DEFAULT_BYTES_PER_HOST_CALL,
    DEFAULT_PLUGIN_CPU_PER_CALL_MS, DEFAULT_PLUGIN_LOG_LINES_PER_SECOND,
    DEFAULT_PLUGIN_MAX_COMPILE_MS, DEFAULT_PLUGIN_MAX_HEADERS_ADDED as DEFAULT_MAX_HEADERS_ADDED,
    DEFAULT_PLUGIN_MAX_HTTP_CALLS as DEFAULT_MAX_HTTP_CALLS,
    DEFAULT_PLUGIN_MAX_HTTP_CALL_TIMEOUT_MS,
    DEFAULT_PLUGIN_MAX_IDLE_INSTANCES as DEFAULT_MAX_IDLE_INSTANCES,
    DEFAULT_PLUGIN_MAX_INSTANCES as DEFAULT_MAX_INSTANCES, DEFAULT_PLUGIN_MAX_METRICS,
    DEFAULT_PLUGIN_MAX_MODULE_BYTES as DEFAULT_MAX_MODULE_BYTES,
    DEFAULT_PLUGIN_MEMORY_BYTES as DEFAULT_MEMORY_BYTES, DEFAULT_PLUGIN_SHARED_DATA_BYTES,
};

/// CPU one hook call may use before it is interrupted.
pub const DEFAULT_CPU_PER_CALL: Duration = Duration::from_millis(DEFAULT_PLUGIN_CPU_PER_CALL_MS);
/// How often the epoch advances: the granularity of the CPU limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Consecutive failed hook calls after which a plugin is marked unhealthy.
pub const UNHEALTHY_AFTER_FAILURES: u32 = 5;
/// First time an unhealthy plugin is left out; doubles on each relapse up to
/// [`UNHEALTHY_BACKOFF_MAX`].
pub const UNHEALTHY_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest time an unhealthy plugin is left out.
pub const UNHEALTHY_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Instances the pooling allocator keeps per engine.
const POOL_INSTANCES: u32 = gantry_config::file::MAX_PLUGIN_ENGINE_INSTANCES as u32;

/// A plugin's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// CPU per hook call.
    pub cpu_per_call: Duration,
    /// Linear memory per instance, bytes.
    pub memory_bytes: usize,
    /// Bytes copied per host call.
    pub bytes_per_host_call: usize,
    /// Headers added per request (and per response).
    pub max_headers_added: usize,
    /// Module size, bytes.
    pub max_module_bytes: usize,
    /// `proxy_http_call`s per request.
    pub max_http_calls: usize,
    /// Longest compilation accepted.
    pub max_compile: Duration,
    /// Instances in use at once (one per request in its plugin phase); more
    /// requests get [`PluginError::Busy`].
    pub max_instances: usize,
    /// Idle instances kept for reuse; more are dropped.
    pub max_idle_instances: usize,
    /// Shared data bytes: keys, values and [`SHARED_DATA_ENTRY_BYTES`] per key.
    pub shared_data_bytes: usize,
    /// Metrics the plugin may define.
    pub max_metrics: usize,
    /// Log lines per second; more are dropped.
    pub log_lines_per_second: u32,
    /// Longest `proxy_http_call` timeout; longer ones (and 0) get this.
    pub max_http_call_timeout: Duration,
    /// Largest request body a plugin may make with `proxy_set_buffer_bytes`
    /// (the route's `max_body_bytes`).
    pub max_request_body_bytes: usize,
}

impl PluginLimits {
    /// The limits a route's plugin entry sets.
    pub fn from_config(p: &gantry_config::PluginRef) -> Self {
        PluginLimits {
            cpu_per_call: p.cpu_per_call,
            memory_bytes: p.memory_bytes,
            bytes_per_host_call: p.bytes_per_host_call,
            max_headers_added: p.max_headers_added,
            max_module_bytes: p.max_module_bytes,
            max_http_calls: p.max_http_calls,
            max_compile: p.max_compile,
            max_instances: p.max_instances,
            max_idle_instances: p.max_idle_instances,
            shared_data_bytes: p.shared_data_bytes,
            max_metrics: p.max_metrics,
            log_lines_per_second: p.log_lines_per_second,
            max_http_call_timeout: p.max_http_call_timeout,
            max_request_body_bytes: usize::try_from(p.max_request_body_bytes).unwrap_or(usize::MAX),
        }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            cpu_per_call: DEFAULT_CPU_PER_CALL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            bytes_per_host_call: DEFAULT_BYTES_PER_HOST_CALL,
            max_headers_added: DEFAULT_MAX_HEADERS_ADDED,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_http_calls: DEFAULT_MAX_HTTP_CALLS,
            max_compile: Duration::from_millis(DEFAULT_PLUGIN_MAX_COMPILE_MS),
            max_instances: DEFAULT_MAX_INSTANCES,
            max_idle_instances: DEFAULT_MAX_IDLE_INSTANCES,
            shared_data_bytes: DEFAULT_PLUGIN_SHARED_DATA_BYTES,
            max_metrics: DEFAULT_PLUGIN_MAX_METRICS,
            log_lines_per_second: DEFAULT_PLUGIN_LOG_LINES_PER_SECOND,
            max_http_call_timeout: Duration::from_millis(DEFAULT_PLUGIN_MAX_HTTP_CALL_TIMEOUT_MS),
            max_request_body_bytes: usize::MAX,
        }
    }
}

/// What happens to a request when its plugin traps or runs out of time:
/// `Closed` (the default) answers 500 naming the plugin, `Open` skips it.
pub use gantry_config::FailureMode as FailurePolicy;

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
}

/// A `proxy_http_call` a plugin made. The gateway performs it and hands the
/// answer to [`HttpContext::on_request`]'s caller-supplied function.
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

/// Why a plugin could not be loaded or a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The module is over `max_module_bytes`.
    #[error("plugin `{plugin}`: module is {size} bytes; the limit (max_module_bytes) is {limit}")]
    TooLarge {
        /// Plugin name.
        plugin: String,
        /// Module size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Compiling the module took longer than `max_compile_ms`.
    #[error("plugin `{plugin}`: compiling took longer than {limit:?}, the limit (max_compile_ms)")]
    CompileTimeout {
        /// Plugin name.
        plugin: String,
        /// The limit.
        limit: Duration,
    },
    /// Not a valid module, or not a proxy-wasm one.
    #[error("plugin `{plugin}`: {reason}")]
    Invalid {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// The plugin failed repeatedly and is left out until `retry_in` passes; its
    /// failure policy applies without running it.
    #[error("plugin `{plugin}` is unhealthy after repeated failures; next try in {retry_in:?}")]
    Unhealthy {
        /// Plugin name.
        plugin: String,
        /// Time left before it runs again.
        retry_in: Duration,
    },
    /// Every instance the plugin may have (`max_instances`) is serving another
    /// request. Not a failure of the plugin: it never counts towards the
    /// unhealthy backoff, and the request is refused (503) whatever the failure
    /// policy, so a busy auth plugin is never skipped.
    #[error("plugin `{plugin}` is busy: all {max_instances} instances (max_instances) are in use")]
    Busy {
        /// Plugin name.
        plugin: String,
        /// The limit.
        max_instances: usize,
    },
    /// A hook trapped, ran out of CPU time, or broke a limit.
    #[error("plugin `{plugin}` failed in {hook}: {reason}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The hook being run.
        hook: &'static str,
        /// The trap or limit, in words.
        reason: String,
        /// Which limit, when one was reached: `cpu`, `memory`, `bytes_per_host_call`,
        /// `headers_added`, `http_calls`.
        limit: Option<&'static str>,
    },
}

/// The wasmtime engine all plugins share, with its epoch ticker.
pub struct PluginEngine {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginEngine")
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    /// An engine with epoch interruption and the pooling allocator; starts the
    /// ticker thread.
    pub fn new() -> anyhow::Result<PluginEngine> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(POOL_INSTANCES);
        pool.total_memories(POOL_INSTANCES);
        pool.total_tables(POOL_INSTANCES);
        pool.max_memory_size(DEFAULT_MEMORY_BYTES.max(64 << 20));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Reserve less virtual memory per slot than wasmtime's 4 GiB default, so a
        // thousand instances fit in small containers' address-space limits.
        config.memory_reservation(128 << 20);
        config.memory_guard_size(32 << 20);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        host::link(&mut linker)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker, flag) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("gantry-plugin-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(PluginEngine {
            engine,
            linker: Arc::new(linker),
            stop,
        })
    }

    /// Compile and check a plugin (off the request path), and run its VM start and
    /// configuration on a first instance, so a plugin that rejects its
    /// configuration is rejected here. `upstreams`: the pools it may call.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        &self,
        name: &str,
        wasm: &[u8],
        configuration: Vec<u8>,
        limits: PluginLimits,
        failure: FailurePolicy,
        upstreams: Vec<String>,
    ) -> Result<Arc<Plugin>, PluginError> {
        let invalid = |reason: String| PluginError::Invalid {
            plugin: name.to_string(),
            reason,
        };
        if wasm.len() > limits.max_module_bytes {
            return Err(PluginError::TooLarge {
                plugin: name.into(),
                size: wasm.len(),
                limit: limits.max_module_bytes,
            });
        }
        // Compiled on a thread of its own, waited for at most `max_compile`: a
        // module built to compile slowly is refused (the thread finishes in the
        // background; compilation cannot be interrupted).
        let (tx, rx) = std::sync::mpsc::channel();
        let (engine, bytes) = (self.engine.clone(), wasm.to_vec());
        std::thread::Builder::new()
            .name("gantry-plugin-compile".into())
            .spawn(move || {
                let _ = tx.send(Module::new(&engine, bytes));
            })
            .map_err(|e| invalid(format!("cannot start compiling: {e}")))?;
        let module = match rx.recv_timeout(limits.max_compile) {
            Ok(compiled) => compiled.map_err(|e| invalid(format!("not a valid module: {e:#}")))?,
            Err(_) => {
                return Err(PluginError::CompileTimeout {
                    plugin: name.into(),
                    limit: limits.max_compile,
                })
            }
        };
        let abi = module
            .exports()
            .find_map(|e| match e.name() {
                "proxy_abi_version_0_2_1" => Some("0.2.1"),
                "proxy_abi_version_0_2_0" => Some("0.2.0"),
                _ => None,
            })
            .ok_or_else(|| {
                invalid(
                    "exports no proxy_abi_version_0_2_1 or _0_2_0: not a proxy-wasm module".into(),
                )
            })?;
        if let Some(import) = module.imports().find(|i| i.module() != "env") {
            return Err(invalid(format!(
                "imports `{}.{}`; only the proxy-wasm ABI (`env`) is offered (no WASI, no network, no files)",
                import.module(),
                import.name()
            )));
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let plugin = Arc::new(Plugin {
            name: name.into(),
            abi,
            engine: self.engine.clone(),
            pre,
            configuration: configuration.into(),
            limits,
            failure,
            shared: Arc::new(Shared::new(&limits)),
            upstreams: upstreams.into(),
            idle: Mutex::new(Vec::new()),
            in_use: AtomicUsize::new(0),
            next_context: AtomicU32::new(2),
            health: Mutex::new(Health::default()),
        });
        let vm = plugin.new_vm().map_err(|e| match e {
            PluginError::Trap { reason, hook, .. } => invalid(format!("{hook}: {reason}")),
            other => other,
        })?;
        plugin.idle.lock().expect("idle lock").push(vm);
        Ok(plugin)
    }
}

/// A hook taking (context id, count or size, end of stream) and returning an action.
type Hook = TypedFunc<(i32, i32, i32), i32>;

/// The guest functions the host calls.
struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    on_request_headers: Option<Hook>,
    on_request_body: Option<Hook>,
    on_response_headers: Option<Hook>,
    on_response_body: Option<Hook>,
    on_http_call_response: Option<CallbackHook>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_delete: Option<TypedFunc<i32, ()>>,
}

/// `proxy_on_http_call_response(root, token, headers, body size, trailers)`.
type CallbackHook = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// One instance with its configured root context.
struct Vm {
    store: Store<HostState>,
    exports: Exports,
}

/// A loaded plugin: compiled once, instantiated per concurrent request, reused.
pub struct Plugin {
    /// Its name (from the route's configuration).
    pub name: String,
    /// The ABI version the module declared.
    pub abi: &'static str,
    engine: Engine,
    pre: InstancePre<HostState>,
    configuration: Arc<[u8]>,
    /// Its limits.
    pub limits: PluginLimits,
    /// Its failure policy.
    pub failure: FailurePolicy,
    shared: Arc<Shared>,
    upstreams: Arc<[String]>,
    idle: Mutex<Vec<Vm>>,
    /// Instances checked out by requests now.
    in_use: AtomicUsize,
    next_context: AtomicU32,
    health: Mutex<Health>,
}

/// Consecutive failures and the backoff they earned.
#[derive(Debug)]
struct Health {
    failures: u32,
    backoff: Duration,
    until: Option<std::time::Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            failures: 0,
            backoff: UNHEALTHY_BACKOFF_MIN,
            until: None,
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).finish()
    }
}

/// The root context id of every instance.
const ROOT_CONTEXT: i32 = 1;

fn classify(plugin: &str, hook: &'static str, err: wasmtime::Error) -> PluginError {
    let limit = if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        Some("cpu")
    } else if let Some(t) = err.downcast_ref::<LimitTrap>() {
        if t.0.contains("bytes_per_host_call") {
            Some("bytes_per_host_call")
        } else if t.0.contains("max_http_calls") {
            Some("http_calls")
        } else {
            Some("headers_added")
        }
    } else {
        None
    };
    let reason = match limit {
        Some("cpu") => {
            "ran past its CPU limit per call (cpu_per_call) and was interrupted".to_string()
        }
        _ => format!("{err:#}"),
    };
    PluginError::Trap {
        plugin: plugin.to_string(),
        hook,
        reason,
        limit,
    }
}

impl Plugin {
    /// Metrics and shared data of this plugin.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Instantiate and configure a fresh instance.
    fn new_vm(&self) -> Result<Vm, PluginError> {
        let state = HostState {
            plugin: self.name.as_str().into(),
            limits: self.limits,
            store_limits: host::Limiter {
                inner: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .instances(1)
                    .build(),
                memory_refused: false,
            },
            configuration: self.configuration.clone(),
            shared: self.shared.clone(),
            exports: host::GuestExports::default(),
            upstreams: self.upstreams.clone(),
            next_token: 1,
            http: HttpState::default(),
            clock: Default::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.store_limits);
        let budget = self.limits.cpu_per_call;
        store.epoch_deadline_callback(move |ctx| cpu::on_tick(ctx, budget));
        cpu::arm(&mut store);
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&self.name, "instantiate", e))?;
        store.data_mut().exports = host::GuestExports::of(&instance, &mut store);
        for start in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, start) {
                cpu::arm(&mut store);
                f.call(&mut store, ())
                    .map_err(|e| classify(&self.name, start, e))?;
                break;
            }
        }
        let func2 = |store: &mut Store<HostState>, name: &str| {
            instance
                .get_typed_func::<(i32, i32, i32), i32>(store, name)
                .ok()
        };
        let context_create = instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "proxy_on_context_create")
            .map_err(|e| PluginError::Invalid {
                plugin: self.name.clone(),
                reason: format!("no proxy_on_context_create export: {e}"),
            })?;
        let exports = Exports {
            context_create,
            on_request_headers: func2(&mut store, "proxy_on_request_headers"),
            on_request_body: func2(&mut store, "proxy_on_request_body"),
            on_response_headers: func2(&mut store, "proxy_on_response_headers"),
            on_response_body: func2(&mut store, "proxy_on_response_body"),
            on_http_call_response: instance
                .get_typed_func::<(i32, i32, i32, i32, i32), ()>(
                    &mut store,
                    "proxy_on_http_call_response",
                )
                .ok(),
            on_done: instance
                .get_typed_func::<i32, i32>(&mut store, "proxy_on_done")
                .ok(),
            on_delete: instance
                .get_typed_func::<i32, ()>(&mut store, "proxy_on_delete")
                .ok(),
        };
        cpu::arm(&mut store);
        exports
            .context_create
            .call(&mut store, (ROOT_CONTEXT, 0))
            .map_err(|e| classify(&self.name, "proxy_on_context_create", e))?;
        let config_len = self.configuration.len() as i32;
        for (name, arg) in [("proxy_on_vm_start", 0), ("proxy_on_configure", config_len)] {
            if let Ok(f) = instance.get_typed_func::<(i32, i32), i32>(&mut store, name) {
                cpu::arm(&mut store);
                let ok = f
                    .call(&mut store, (ROOT_CONTEXT, arg))
                    .map_err(|e| classify(&self.name, "configure", e))?;
                if ok == 0 {
                    return Err(PluginError::Invalid {
                        plugin: self.name.clone(),
                        reason: format!(
                            "{name} returned false (the plugin rejected its configuration)"
                        ),
                    });
                }
            }
        }
        Ok(Vm { store, exports })
    }

    /// A hook call failed: after [`UNHEALTHY_AFTER_FAILURES`] in a row the plugin
    /// is left out for a backoff that doubles on each relapse.
    fn record_failure(&self) {
        let mut h = self.health.lock().expect("health lock");
        h.failures += 1;
        if h.failures >= UNHEALTHY_AFTER_FAILURES {
            let backoff = h.backoff;
            h.until = Some(std::time::Instant::now() + backoff);
            h.backoff = (backoff * 2).min(UNHEALTHY_BACKOFF_MAX);
            h.failures = 0;
            tracing::warn!(target: "gantry::plugin", plugin = %self.name, backoff_ms = backoff.as_millis() as u64, "plugin marked unhealthy after repeated failures");
        }
    }

    /// A hook call succeeded: the failure count and backoff start over.
    fn record_success(&self) {
        let mut h = self.health.lock().expect("health lock");
        if h.failures != 0 || h.backoff != UNHEALTHY_BACKOFF_MIN {
            *h = Health::default();
        }
    }

    /// Whether the plugin is in its unhealthy backoff now.
    pub fn is_unhealthy(&self) -> bool {
        self.health
            .lock()
            .expect("health lock")
            .until
            .is_some_and(|u| std::time::Instant::now() < u)
    }

    /// Start filtering one request: check out an idle instance (or make one) and
    /// create its HTTP context. `properties` are what `proxy_get_property` answers
    /// (`request.path`, `source.address`, ...; the host answers `plugin_name`),
    /// one list shared by every plugin of the route. An unhealthy plugin
    /// is not run: [`PluginError::Unhealthy`].
    pub fn start_request(
        self: &Arc<Self>,
        properties: impl Into<Arc<[(String, Vec<u8>)]>>,
    ) -> Result<HttpContext, PluginError> {
        let properties = properties.into();
        if let Some(until) = self.health.lock().expect("health lock").until {
            let now = std::time::Instant::now();
            if now < until {
                return Err(PluginError::Unhealthy {
                    plugin: self.name.clone(),
                    retry_in: until - now,
                });
            }
        }
        let max = self.limits.max_instances;
        if self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(PluginError::Busy {
                plugin: self.name.clone(),
                max_instances: max,
            });
        }
        let started = self.start_request_inner(properties);
        if started.is_err() {
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            self.record_failure();
        }
        started
    }

    /// Instances checked out by requests now.
    pub fn instances_in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Give back an instance whose request ended: kept for reuse while the idle
    /// list is under `max_idle_instances`, else dropped.
    fn check_in(&self, vm: Option<Vm>) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        if let Some(vm) = vm {
            let mut idle = self.idle.lock().expect("idle lock");
            if idle.len() < self.limits.max_idle_instances {
                idle.push(vm);
            }
        }
    }

    fn start_request_inner(
        self: &Arc<Self>,
        properties: Arc<[(String, Vec<u8>)]>,
    ) -> Result<HttpContext, PluginError> {
        let vm = self.idle.lock().expect("idle lock").pop();
        let mut vm = match vm {
            Some(vm) => vm,
            None => self.new_vm()?,
        };
        let id = self.next_context.fetch_add(1, Ordering::Relaxed) as i32;
        vm.store.data_mut().http = HttpState {
            properties,
            ..HttpState::default()
        };
        vm.store.data_mut().store_limits.memory_refused = false;
        cpu::arm(&mut vm.store);
        vm.exports
            .context_create
            .call(&mut vm.store, (id, ROOT_CONTEXT))
            .map_err(|e| classify(&self.name, "proxy_on_context_create", e))?;
        Ok(HttpContext {
            plugin: self.clone(),
            vm: Some(vm),
            id,
        })
    }

    /// Instances waiting for a request.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().expect("idle lock").len()
    }
}

/// One request's HTTP context in one plugin instance. Dropping it ends the
/// context (`proxy_on_done`, `proxy_on_delete`) and returns the instance for
/// reuse, unless a hook failed: a broken instance is discarded.
pub struct HttpContext {
    plugin: Arc<Plugin>,
    vm: Option<Vm>,
    id: i32,
}

impl std::fmt::Debug for HttpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpContext")
            .field("plugin", &self.plugin.name)
            .field("id", &self.id)
            .finish()
    }
}

/// Which body hook to run.
#[derive(Clone, Copy)]
enum Side {
    Request,
    Response,
}

impl HttpContext {
    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    fn call(
        &mut self,
        hook: &'static str,
        pick: fn(&Exports) -> Option<Hook>,
        arg: i32,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        let Some(vm) = self.vm.as_mut() else {
            return Err(PluginError::Trap {
                plugin: self.plugin.name.clone(),
                hook,
                reason: "the instance failed earlier in this request".into(),
                limit: None,
            });
        };
        let Some(f) = pick(&vm.exports) else {
            return Ok(Decision::Continue);
        };
        cpu::arm(&mut vm.store);
        let result = f.call(&mut vm.store, (self.id, arg, i32::from(end_of_stream)));
        match result {
            Ok(action) => {
                self.plugin.record_success();
                if let Some(local) = vm.store.data_mut().http.local_response.take() {
                    return Ok(Decision::Respond(local));
                }
                Ok(match abi::Action::from_abi(action) {
                    abi::Action::Pause => Decision::Pause,
                    abi::Action::Continue => Decision::Continue,
                })
            }
            Err(e) => Err(self.failed(hook, e)),
        }
    }

    /// A hook trapped: a trapped instance may hold any state, so it is never
    /// reused; the failure counts towards the plugin's health.
    fn failed(&mut self, hook: &'static str, e: wasmtime::Error) -> PluginError {
        let memory_refused = self
            .vm
            .take()
            .is_some_and(|vm| vm.store.data().store_limits.memory_refused);
        self.plugin.record_failure();
        match classify(&self.plugin.name, hook, e) {
            // A trap after a refused memory.grow: the guest ran out of memory.
            PluginError::Trap {
                plugin,
                hook,
                reason,
                limit: None,
            } if memory_refused => PluginError::Trap {
                plugin,
                hook,
                reason: format!("{reason} (after memory.grow was refused at memory_bytes)"),
                limit: Some("memory"),
            },
            other => other,
        }
    }

    /// The request phase of this plugin: its request-headers hook, then, when
    /// the request has a body, its request-body hook with the whole body
    /// (`end_of_stream` set). Calls the plugin makes with `proxy_http_call` are
    /// performed by `perform` (`None`: the call failed or timed out) and the
    /// answers handed to `proxy_on_http_call_response`, until the plugin
    /// continues, resumes or answers. Pausing with nothing left to wait for (no
    /// body to come, no call pending) continues.
    pub async fn on_request<F, Fut>(
        &mut self,
        headers: &mut Vec<(String, String)>,
        body: Option<&mut Vec<u8>>,
        mut perform: F,
    ) -> Result<Decision, PluginError>
    where
        F: FnMut(HttpCall) -> Fut + Send,
        Fut: std::future::Future<Output = Option<HttpCallResponse>> + Send,
    {
        let n = headers.len() as i32;
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            http.request_headers = std::mem::take(headers);
            http.headers_added = 0;
            http.calls_allowed = true;
        }
        let result = self.request_phase(n, body, &mut perform).await;
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            *headers = std::mem::take(&mut http.request_headers);
            http.calls_allowed = false;
            http.calls.clear();
        }
        match result? {
            Decision::Pause => Ok(Decision::Continue),
            other => Ok(other),
        }
    }

    async fn request_phase<F, Fut>(
        &mut self,
        n: i32,
        body: Option<&mut Vec<u8>>,
        perform: &mut F,
    ) -> Result<Decision, PluginError>
    where
        F: FnMut(HttpCall) -> Fut + Send,
        Fut: std::future::Future<Output = Option<HttpCallResponse>> + Send,
    {
        let headers = self.call(
            "proxy_on_request_headers",
            |e| e.on_request_headers.clone(),
            n,
            body.is_none(),
        )?;
        let headers = self.settle(headers, perform).await?;
        let Some(body) = body else {
            return Ok(headers);
        };
        if let Decision::Respond(_) = headers {
            return Ok(headers);
        }
        let n = body.len() as i32;
        if let Some(vm) = self.vm.as_mut() {
            vm.store.data_mut().http.request_body = std::mem::take(body);
        }
        let decision = match self.call(
            "proxy_on_request_body",
            |e| e.on_request_body.clone(),
            n,
            true,
        ) {
            Ok(d) => self.settle(d, perform).await,
            Err(e) => Err(e),
        };
        if let Some(vm) = self.vm.as_mut() {
            *body = std::mem::take(&mut vm.store.data_mut().http.request_body);
        }
        decision
    }

    /// Perform the calls the last hook made, and any its callbacks make, handing
    /// each answer back; a local response or a resume from a callback decides.
    async fn settle<F, Fut>(
        &mut self,
        mut decision: Decision,
        perform: &mut F,
    ) -> Result<Decision, PluginError>
    where
        F: FnMut(HttpCall) -> Fut + Send,
        Fut: std::future::Future<Output = Option<HttpCallResponse>> + Send,
    {
        loop {
            let calls = match self.vm.as_mut() {
                Some(vm) => std::mem::take(&mut vm.store.data_mut().http.calls),
                None => Vec::new(),
            };
            if calls.is_empty() {
                return Ok(decision);
            }
            for call in calls {
                let token = call.token;
                let answer = perform(call).await;
                match self.deliver(token, answer)? {
                    Decision::Respond(local) => return Ok(Decision::Respond(local)),
                    Decision::Continue => decision = Decision::Continue,
                    Decision::Pause => {}
                }
            }
        }
    }

    /// Hand one call's answer to `proxy_on_http_call_response` (no headers and
    /// no body when the call failed, as Envoy does).
    fn deliver(
        &mut self,
        token: u32,
        answer: Option<HttpCallResponse>,
    ) -> Result<Decision, PluginError> {
        const HOOK: &str = "proxy_on_http_call_response";
        let Some(vm) = self.vm.as_mut() else {
            return Err(PluginError::Trap {
                plugin: self.plugin.name.clone(),
                hook: HOOK,
                reason: "the instance failed earlier in this request".into(),
                limit: None,
            });
        };
        let Some(f) = vm.exports.on_http_call_response.clone() else {
            return Ok(Decision::Pause);
        };
        let answer = answer.unwrap_or_default();
        let (headers, body) = (answer.headers.len() as i32, answer.body.len() as i32);
        let http = &mut vm.store.data_mut().http;
        http.call_response = Some(answer);
        http.resumed = false;
        cpu::arm(&mut vm.store);
        match f.call(
            &mut vm.store,
            (ROOT_CONTEXT, token as i32, headers, body, 0),
        ) {
            Ok(()) => {
                self.plugin.record_success();
                let http = &mut vm.store.data_mut().http;
                http.call_response = None;
                if let Some(local) = http.local_response.take() {
                    Ok(Decision::Respond(local))
                } else if http.resumed {
                    Ok(Decision::Continue)
                } else {
                    Ok(Decision::Pause)
                }
            }
            Err(e) => Err(self.failed(HOOK, e)),
        }
    }

    /// The request headers as they went upstream, for the response phase to read
    /// (`proxy_get_header_map_*` on request headers, `request.headers.*`
    /// properties); changing them from now on gets `InternalFailure`.
    pub fn keep_request_headers(&mut self, headers: Vec<(String, String)>) {
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            http.request_headers = headers;
            http.request_headers_sent = true;
        }
    }

    /// Request headers (pseudo-headers `:method`, `:path`, `:authority`,
    /// `:scheme` included); the plugin may change them in place.
    pub fn on_request_headers(
        &mut self,
        headers: &mut Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        self.with_map(Side::Request, headers, |ctx, n| {
            ctx.call(
                "proxy_on_request_headers",
                |e| e.on_request_headers.clone(),
                n,
                end_of_stream,
            )
        })
    }

    /// Response headers (`:status` included).
    pub fn on_response_headers(
        &mut self,
        headers: &mut Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        self.with_map(Side::Response, headers, |ctx, n| {
            ctx.call(
                "proxy_on_response_headers",
                |e| e.on_response_headers.clone(),
                n,
                end_of_stream,
            )
        })
    }

    /// Request body (what has arrived so far); the plugin may replace it.
    pub fn on_request_body(
        &mut self,
        body: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        self.with_body(Side::Request, body, |ctx, n| {
            ctx.call(
                "proxy_on_request_body",
                |e| e.on_request_body.clone(),
                n,
                end_of_stream,
            )
        })
    }

    /// Response body (what has arrived so far); the plugin may replace it.
    pub fn on_response_body(
        &mut self,
        body: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Decision, PluginError> {
        self.with_body(Side::Response, body, |ctx, n| {
            ctx.call(
                "proxy_on_response_body",
                |e| e.on_response_body.clone(),
                n,
                end_of_stream,
            )
        })
    }

    fn with_map(
        &mut self,
        side: Side,
        headers: &mut Vec<(String, String)>,
        run: impl FnOnce(&mut Self, i32) -> Result<Decision, PluginError>,
    ) -> Result<Decision, PluginError> {
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            let slot = match side {
                Side::Request => &mut http.request_headers,
                Side::Response => &mut http.response_headers,
            };
            *slot = std::mem::take(headers);
            http.headers_added = 0;
        }
        let n = headers.len() as i32;
        let result = run(self, n);
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            *headers = std::mem::take(match side {
                Side::Request => &mut http.request_headers,
                Side::Response => &mut http.response_headers,
            });
        }
        result
    }

    fn with_body(
        &mut self,
        side: Side,
        body: &mut Vec<u8>,
        run: impl FnOnce(&mut Self, i32) -> Result<Decision, PluginError>,
    ) -> Result<Decision, PluginError> {
        let n = body.len() as i32;
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            *match side {
                Side::Request => &mut http.request_body,
                Side::Response => &mut http.response_body,
            } = std::mem::take(body);
        }
        let result = run(self, n);
        if let Some(vm) = self.vm.as_mut() {
            let http = &mut vm.store.data_mut().http;
            *body = std::mem::take(match side {
                Side::Request => &mut http.request_body,
                Side::Response => &mut http.response_body,
            });
        }
        result
    }
}

impl Drop for HttpContext {
    fn drop(&mut self) {
        let Some(mut vm) = self.vm.take() else {
            self.plugin.check_in(None);
            return;
        };
        let mut ok = true;
        if let Some(done) = vm.exports.on_done.clone() {
            cpu::arm(&mut vm.store);
            ok &= done.call(&mut vm.store, self.id).is_ok();
        }
        if let Some(delete) = vm.exports.on_delete.clone() {
            cpu::arm(&mut vm.store);
            ok &= delete.call(&mut vm.store, self.id).is_ok();
        }
        if ok {
            vm.store.data_mut().http = HttpState::default();
            self.plugin.check_in(Some(vm));
        } else {
            self.plugin.check_in(None);
        }
    }
}
