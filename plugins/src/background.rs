//! A plugin's background instance and the engine's timer thread: what runs
//! outside any request (`proxy_on_tick`).
//!
//! A plugin whose first instance asks for a tick period
//! (`proxy_set_tick_period_milliseconds`, usually in `proxy_on_vm_start` or
//! `proxy_on_configure`) keeps that instance out of the request pool: its root
//! context gets `proxy_on_tick` every period, as Envoy's singleton VM does.
//! Request instances' root contexts are never ticked (they are many, and
//! checked out by requests); state a tick refreshes reaches requests through
//! shared data, as it reaches other workers' VMs in Envoy. Each tick is a hook
//! call under the plugin's CPU limit. One that traps discards the instance
//! and is counted; the next attempt, on a new instance (configured again, so
//! it asks for its period again), comes after a backoff that doubles from
//! [`UNHEALTHY_BACKOFF_MIN`] to [`UNHEALTHY_BACKOFF_MAX`]: a failing timer
//! slows down but never stops for good.
//!
//! One thread per engine runs every plugin's ticks, in due order; a plugin is
//! dropped from it when the plugin is (a reload's old version stops ticking).

use crate::cpu;
use crate::error::{classify, PluginError};
use crate::plugin::{Plugin, Vm, ROOT_CONTEXT};
use crate::{UNHEALTHY_BACKOFF_MAX, UNHEALTHY_BACKOFF_MIN};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Longest the timer thread sleeps without looking (a new timer wakes it sooner).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// A timer this far behind (the thread was starved) skips what it missed
/// instead of ticking back to back.
const MAX_CATCH_UP: Duration = Duration::from_secs(1);

/// A plugin's background instance and its timer.
#[derive(Default)]
pub(crate) struct Background {
    /// The instance its ticks run on; `None` after a trap, until the next attempt.
    vm: Option<Vm>,
    /// The tick period it asked for; `None`: no timer.
    period: Option<Duration>,
    /// When the next tick (or attempt) is due.
    due: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
}

impl Background {
    /// Keep `vm` as the background instance if it asked for a tick period;
    /// else give it back.
    pub(crate) fn adopt(&mut self, mut vm: Vm) -> Option<Vm> {
        let period = vm.store.data_mut().tick_period.take()?;
        if period.is_zero() {
            return Some(vm);
        }
        self.vm = Some(vm);
        self.period = Some(period);
        self.due = Some(Instant::now() + period);
        self.backoff = UNHEALTHY_BACKOFF_MIN;
        None
    }
}

impl Plugin {
    /// When this plugin's next tick is due, if it has a timer.
    pub(crate) fn tick_due(&self) -> Option<Instant> {
        self.background.lock().expect("background lock").due
    }

    /// Run the tick due now: `proxy_on_tick` on the background instance (a
    /// new one after a trap), then schedule the next.
    pub(crate) fn tick(&self) {
        let mut bg = self.background.lock().expect("background lock");
        let (Some(period), Some(due)) = (bg.period, bg.due) else {
            return;
        };
        let ran = match bg.vm.take() {
            Some(vm) => self.run_tick(vm),
            None => self.new_vm().and_then(|vm| self.run_tick(vm)),
        };
        let now = Instant::now();
        match ran {
            Ok(mut vm) => {
                self.shared.ticked(true);
                // A tick may change the period, or stop the timer (0).
                let period = match vm.store.data_mut().tick_period.take() {
                    Some(p) if p.is_zero() => None,
                    Some(p) => Some(p),
                    None => Some(period),
                };
                bg.vm = Some(vm);
                bg.backoff = UNHEALTHY_BACKOFF_MIN;
                bg.period = period;
                // Due times advance by the period (no drift); a thread
                // starved for long skips ahead instead of catching up.
                bg.due = period.map(|p| {
                    let next = due + p;
                    if next + MAX_CATCH_UP < now {
                        now + p
                    } else {
                        next
                    }
                });
            }
            Err(e) => {
                self.shared.ticked(false);
                if let Some(limit) = e.limit() {
                    self.shared.hit(limit);
                }
                tracing::warn!(target: "gantry::plugin", plugin = %self.name, error = %e, backoff_ms = bg.backoff.as_millis() as u64, "plugin tick failed; trying again on a new instance after the backoff");
                bg.due = Some(now + bg.backoff.max(period));
                bg.backoff = (bg.backoff * 2).min(UNHEALTHY_BACKOFF_MAX);
            }
        }
    }

    fn run_tick(&self, mut vm: Vm) -> Result<Vm, PluginError> {
        let Some(on_tick) = vm.exports.on_tick.clone() else {
            return Ok(vm);
        };
        vm.store.data_mut().store_limits.memory_refused = false;
        cpu::arm(&mut vm.store);
        match on_tick.call(&mut vm.store, ROOT_CONTEXT) {
            Ok(()) => Ok(vm),
            Err(e) => Err(classify(&self.name, "proxy_on_tick", e)),
        }
    }
}

/// The engine's timers: every plugin with a tick period, run by one thread.
#[derive(Default)]
pub(crate) struct Timers {
    plugins: Mutex<Vec<Weak<Plugin>>>,
    changed: Condvar,
    stop: AtomicBool,
}

impl Timers {
    /// Start the timer thread.
    pub(crate) fn start() -> std::io::Result<Arc<Timers>> {
        let timers = Arc::new(Timers::default());
        let run = timers.clone();
        std::thread::Builder::new()
            .name("gantry-plugin-timers".into())
            .spawn(move || run.run())?;
        Ok(timers)
    }

    /// Tick `plugin` from now on, while it lives.
    pub(crate) fn add(&self, plugin: &Arc<Plugin>) {
        let mut plugins = self.plugins.lock().expect("timers lock");
        plugins.push(Arc::downgrade(plugin));
        self.changed.notify_one();
    }

    /// Stop the thread (the engine is dropped).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _plugins = self.plugins.lock().expect("timers lock");
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut plugins = self.plugins.lock().expect("timers lock");
        while !self.stop.load(Ordering::Relaxed) {
            plugins.retain(|p| p.strong_count() > 0);
            let live: Vec<Arc<Plugin>> = plugins.iter().filter_map(Weak::upgrade).collect();
            drop(plugins);
            let now = Instant::now();
            let mut wake = now + IDLE_WAKE;
            for p in &live {
                if p.tick_due().is_some_and(|due| due <= now) {
                    p.tick();
                }
                if let Some(due) = p.tick_due() {
                    wake = wake.min(due);
                }
            }
            drop(live);
            plugins = self.plugins.lock().expect("timers lock");
            let wait = wake.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                plugins = self
                    .changed
                    .wait_timeout(plugins, wait)
                    .expect("timers lock")
                    .0;
            }
        }
    }
}
