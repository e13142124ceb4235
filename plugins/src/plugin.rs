//! One loaded plugin: its compiled module ready to instantiate, its
//! instances (checked out per request, kept idle up to a bound), and its
//! health (left out for a while after repeated failures).

use crate::context::HttpContext;
use crate::cpu;
use crate::error::{classify, PluginError};
use crate::host::{self, HostState, HttpState};
use crate::limits::PluginLimits;
use crate::{
    FailurePolicy, Shared, UNHEALTHY_AFTER_FAILURES, UNHEALTHY_BACKOFF_MAX, UNHEALTHY_BACKOFF_MIN,
};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::{Engine, InstancePre, Store, StoreLimitsBuilder, TypedFunc};

/// A hook taking (context id, count or size, end of stream) and returning an action.
pub(crate) type Hook = TypedFunc<(i32, i32, i32), i32>;

/// The guest functions the host calls.
pub(crate) struct Exports {
    context_create: TypedFunc<(i32, i32), ()>,
    pub(crate) on_request_headers: Option<Hook>,
    pub(crate) on_request_body: Option<Hook>,
    pub(crate) on_response_headers: Option<Hook>,
    pub(crate) on_response_body: Option<Hook>,
    pub(crate) on_http_call_response: Option<CallbackHook>,
    pub(crate) on_done: Option<TypedFunc<i32, i32>>,
    pub(crate) on_delete: Option<TypedFunc<i32, ()>>,
    /// `proxy_on_tick(root)`, for the background instance.
    pub(crate) on_tick: Option<TypedFunc<i32, ()>>,
    /// `proxy_on_queue_ready(root, token)`, for the background instance.
    pub(crate) on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    /// `proxy_on_grpc_receive_initial_metadata`, `proxy_on_grpc_receive`,
    /// `proxy_on_grpc_receive_trailing_metadata`, `proxy_on_grpc_close`.
    pub(crate) on_grpc: [Option<GrpcHook>; 4],
}

/// A gRPC callback: (context, token, metadata count, message size or status code).
pub(crate) type GrpcHook = TypedFunc<(i32, i32, i32), ()>;

/// `proxy_on_http_call_response(root, token, headers, body size, trailers)`.
type CallbackHook = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// One instance with its configured root context. Two pointers: a request
/// moves it out of the idle list and back, and into its HTTP context.
pub(crate) struct Vm {
    pub(crate) store: Store<HostState>,
    pub(crate) exports: Box<Exports>,
}

/// A loaded plugin: compiled once, instantiated per concurrent request, reused.
pub struct Plugin {
    /// Its name (from the route's configuration).
    pub name: String,
    /// The ABI version the module declared.
    pub abi: &'static str,
    pub(crate) engine: Engine,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) configuration: Arc<[u8]>,
    /// Its limits.
    pub limits: PluginLimits,
    /// Its failure policy.
    pub failure: FailurePolicy,
    pub(crate) shared: Arc<Shared>,
    pub(crate) upstreams: Arc<[String]>,
    pub(crate) idle: Mutex<Vec<Vm>>,
    /// Instances checked out by requests now.
    pub(crate) in_use: AtomicUsize,
    pub(crate) next_context: AtomicU32,
    pub(crate) health: Mutex<Health>,
    /// Whether `health` is anything but the default (a failure counted, a
    /// backoff earned): healthy calls then touch no lock.
    pub(crate) troubled: AtomicBool,
    /// The instance that runs outside requests (ticks), if it asked to.
    pub(crate) background: Mutex<crate::background::Background>,
}

/// Consecutive failures and the backoff they earned.
#[derive(Debug)]
pub(crate) struct Health {
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
pub(crate) const ROOT_CONTEXT: i32 = 1;

impl Plugin {
    /// Metrics and shared data of this plugin.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Instantiate and configure a fresh instance.
    pub(crate) fn new_vm(&self) -> Result<Vm, PluginError> {
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
            tick_period: None,
            registered_queue: false,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.store_limits);
        let budget = self.limits.cpu_per_call;
        store.epoch_deadline_callback(move |ctx| cpu::on_tick(ctx, budget));
        cpu::arm(&mut store);
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            // Every slot of the engine is taken (by other plugins, or a
            // reloaded version's while the old one's requests finish): busy,
            // like this plugin at its own cap, and not its failure.
            if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                return PluginError::Busy {
                    plugin: self.name.clone(),
                    max_instances: self.limits.max_instances,
                    engine_full: true,
                };
            }
            classify(&self.name, "instantiate", e)
        })?;
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
            on_tick: instance
                .get_typed_func::<i32, ()>(&mut store, "proxy_on_tick")
                .ok(),
            on_queue_ready: instance
                .get_typed_func::<(i32, i32), ()>(&mut store, "proxy_on_queue_ready")
                .ok(),
            on_grpc: [
                "proxy_on_grpc_receive_initial_metadata",
                "proxy_on_grpc_receive",
                "proxy_on_grpc_receive_trailing_metadata",
                "proxy_on_grpc_close",
            ]
            .map(|name| {
                instance
                    .get_typed_func::<(i32, i32, i32), ()>(&mut store, name)
                    .ok()
            }),
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
        Ok(Vm {
            store,
            exports: Box::new(exports),
        })
    }

    /// A hook call failed: after [`UNHEALTHY_AFTER_FAILURES`] in a row the plugin
    /// is left out for a backoff that doubles on each relapse.
    pub(crate) fn record_failure(&self) {
        let mut h = self.health.lock().expect("health lock");
        self.troubled.store(true, Ordering::Release);
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
    pub(crate) fn record_success(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock().expect("health lock");
        if h.failures != 0 || h.backoff != UNHEALTHY_BACKOFF_MIN {
            *h = Health::default();
        }
        self.troubled.store(false, Ordering::Release);
    }

    /// Whether the plugin is in its unhealthy backoff now.
    pub fn is_unhealthy(&self) -> bool {
        self.troubled.load(Ordering::Acquire)
            && self
                .health
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
        properties: impl Into<crate::Properties>,
    ) -> Result<HttpContext, PluginError> {
        let properties = properties.into();
        let until = match self.troubled.load(Ordering::Acquire) {
            true => self.health.lock().expect("health lock").until,
            false => None,
        };
        if let Some(until) = until {
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
                engine_full: false,
            });
        }
        let started = self.start_request_inner(properties);
        if let Err(e) = &started {
            self.in_use.fetch_sub(1, Ordering::AcqRel);
            if !matches!(e, PluginError::Busy { .. }) {
                self.record_failure();
            }
        }
        started
    }

    /// Instances checked out by requests now.
    pub fn instances_in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Give back an instance whose request ended: kept for reuse while the idle
    /// list is under `max_idle_instances`, else dropped.
    pub(crate) fn check_in(&self, vm: Option<Vm>) {
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
        properties: crate::Properties,
    ) -> Result<HttpContext, PluginError> {
        let vm = self.idle.lock().expect("idle lock").pop();
        let mut vm = match vm {
            Some(vm) => vm,
            None => self.new_vm()?,
        };
        let id = self.next_context.fetch_add(1, Ordering::Relaxed) as i32;
        vm.store.data_mut().http = HttpState {
            properties: Some(properties),
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
