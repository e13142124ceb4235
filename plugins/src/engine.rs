//! The wasmtime engine all plugins share: its configuration (pooling
//! allocator, epoch interruption), the ticker that advances the epoch, the
//! linker of host functions, and loading a plugin.

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

/// The wasmtime engine all plugins share, with its epoch ticker.
pub struct PluginEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<HostState>>,
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
        });
        let vm = plugin.new_vm().map_err(|e| match e {
            PluginError::Trap { reason, hook, .. } => invalid(format!("{hook}: {reason}")),
            other => other,
        })?;
        plugin.idle.lock().expect("idle lock").push(vm);
        Ok(plugin)
    }
}
