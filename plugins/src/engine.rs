//! The wasmtime engine all plugins share: its configuration (pooling
//! allocator, epoch interruption), the ticker that advances the epoch, the
//! linker of host functions, and loading a plugin.

use crate::background::BackgroundThread;
use crate::error::PluginError;
use crate::host::HostState;
use crate::limits::PluginLimits;
use crate::plugin::{Health, Plugin};
use crate::EPOCH_TICK;
use crate::{host, FailurePolicy, Shared};
use gantry_config::file::DEFAULT_PLUGIN_MEMORY_BYTES as DEFAULT_MEMORY_BYTES;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::Arc;
use std::sync::Mutex;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
};

/// Instances the pooling allocator keeps per engine.
const POOL_INSTANCES: u32 = gantry_config::file::MAX_PLUGIN_ENGINE_INSTANCES as u32;

/// Address space reserved per instance slot at least (the rest of a slot's
/// memory is guard pages): a thousand slots fit small containers' limits.
const MIN_MEMORY_RESERVATION: usize = 128 << 20;

/// What the engine's pooling allocator holds: instance slots, and the largest
/// linear memory any plugin may grow to. Each slot reserves address space (not
/// memory) for that largest memory plus a 32 MiB guard; pages are committed
/// only as a guest touches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineCapacity {
    /// Instances alive at once, across every plugin.
    pub instances: u32,
    /// The largest `memory_bytes` of any plugin.
    pub memory_bytes: usize,
}

impl Default for EngineCapacity {
    /// Every slot the configuration may ask for, and memories up to 64 MiB.
    fn default() -> Self {
        EngineCapacity {
            instances: POOL_INSTANCES,
            memory_bytes: DEFAULT_MEMORY_BYTES.max(64 << 20),
        }
    }
}

impl EngineCapacity {
    /// Sized for `plugins`: twice their `max_instances` and background
    /// instance (a reload's new version fills while the old one's requests
    /// finish), at most
    /// [`gantry_config::file::MAX_PLUGIN_ENGINE_INSTANCES`], and their largest
    /// `memory_bytes`.
    pub fn for_plugins<'a>(
        plugins: impl IntoIterator<Item = &'a gantry_config::PluginRef>,
    ) -> Self {
        let (mut instances, mut memory_bytes) = (0usize, DEFAULT_MEMORY_BYTES);
        for p in plugins {
            let each = p.max_instances.saturating_add(1);
            instances = instances.saturating_add(each.saturating_mul(2));
            memory_bytes = memory_bytes.max(p.memory_bytes);
        }
        EngineCapacity {
            instances: instances.clamp(1, POOL_INSTANCES as usize) as u32,
            memory_bytes,
        }
    }
}

/// The wasmtime engine all plugins share, with its epoch ticker.
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<HostState>>,
    stop: Arc<AtomicBool>,
    /// The thread of plugins' background calls (see [`crate::background`]).
    background: Arc<BackgroundThread>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginEngine")
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.background.stop();
    }
}

impl PluginEngine {
    /// An engine of the default [`EngineCapacity`].
    pub fn new() -> anyhow::Result<PluginEngine> {
        PluginEngine::with_capacity(EngineCapacity::default())
    }

    /// An engine with epoch interruption and a pooling allocator of
    /// `capacity`; starts the ticker thread.
    pub fn with_capacity(capacity: EngineCapacity) -> anyhow::Result<PluginEngine> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(capacity.instances);
        pool.total_memories(capacity.instances);
        pool.total_tables(capacity.instances);
        pool.max_memory_size(capacity.memory_bytes);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // Reserve less virtual memory per slot than wasmtime's 4 GiB default
        // (enough for the largest memory), so many instances fit in small
        // containers' address-space limits.
        config.memory_reservation(capacity.memory_bytes.max(MIN_MEMORY_RESERVATION) as u64);
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
            background: BackgroundThread::start()?,
        })
    }

    /// Compile and check a plugin (off the request path), and run its VM start and
    /// configuration on a first instance, so a plugin that rejects its
    /// configuration is rejected here. `upstreams`: the pools it may call.
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
            troubled: Default::default(),
            background: Mutex::default(),
        });
        let vm = plugin.new_vm().map_err(|e| match e {
            PluginError::Trap { reason, hook, .. } => invalid(format!("{hook}: {reason}")),
            other => other,
        })?;
        let _ = plugin
            .shared
            .background
            .set(Arc::downgrade(&self.background));
        // A first instance that asked for ticks or registered a queue runs
        // outside requests; else it serves them.
        let adopted = plugin.background.lock().expect("background lock").adopt(vm);
        match adopted {
            Some(vm) => plugin.idle.lock().expect("idle lock").push(vm),
            None => self.background.add(&plugin),
        }
        Ok(plugin)
    }
}
