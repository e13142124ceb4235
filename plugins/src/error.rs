//! What can go wrong with a plugin: loading it, or one of its hooks
//! ([`PluginError`]); a limit the host enforces travels in the trap as a
//! [`Limit`], never as text to be recognised.

use crate::limits::Limit;
use std::time::Duration;

/// A trap raised by the host when a plugin breaks a limit.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LimitTrap {
    /// The limit broken.
    pub limit: Limit,
    /// What happened, naming the limit's config field.
    pub message: String,
}

impl LimitTrap {
    /// A trap for `limit`, as a wasmtime error.
    pub(crate) fn error(limit: Limit, message: String) -> wasmtime::Error {
        wasmtime::Error::new(LimitTrap { limit, message })
    }
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
    /// request, or every slot of the engine is (`engine_full`: the plugins'
    /// instances together, as while a reloaded version fills). Not a failure
    /// of the plugin: it never counts towards the unhealthy backoff, and the
    /// request is refused (503) whatever the failure policy, so a busy auth
    /// plugin is never skipped.
    #[error("plugin `{plugin}` is busy: {}", busy_reason(*.max_instances, *.engine_full))]
    Busy {
        /// Plugin name.
        plugin: String,
        /// The limit.
        max_instances: usize,
        /// The engine's slots, not the plugin's own, ran out.
        engine_full: bool,
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
        /// Which limit, when one was reached.
        limit: Option<Limit>,
    },
}

impl PluginError {
    /// The plugin's name.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::TooLarge { plugin, .. }
            | PluginError::CompileTimeout { plugin, .. }
            | PluginError::Invalid { plugin, .. }
            | PluginError::Unhealthy { plugin, .. }
            | PluginError::Busy { plugin, .. }
            | PluginError::Trap { plugin, .. } => plugin,
        }
    }

    /// The limit reached, if this error is one.
    pub fn limit(&self) -> Option<Limit> {
        match self {
            PluginError::TooLarge { .. } => Some(Limit::ModuleBytes),
            PluginError::CompileTimeout { .. } => Some(Limit::CompileTime),
            PluginError::Busy { .. } => Some(Limit::Instances),
            PluginError::Trap { limit, .. } => *limit,
            PluginError::Invalid { .. } | PluginError::Unhealthy { .. } => None,
        }
    }
}

/// The error of a failed hook call: which limit it broke, if any.
/// Which cap a busy plugin reached, in the words of its error (the gateway's
/// `plugin_busy` answer says the same).
pub fn busy_reason(max_instances: usize, engine_full: bool) -> String {
    match engine_full {
        true => "every instance slot of the plugin engine is in use".into(),
        false => format!("all {max_instances} instances (max_instances) are in use"),
    }
}

pub(crate) fn classify(plugin: &str, hook: &'static str, err: wasmtime::Error) -> PluginError {
    let limit = if err.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        Some(Limit::Cpu)
    } else {
        err.downcast_ref::<LimitTrap>().map(|t| t.limit)
    };
    let reason = match limit {
        Some(Limit::Cpu) => {
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
