//! A plugin's background instance and the engine's background thread: what
//! runs outside any request (`proxy_on_tick`, `proxy_on_queue_ready`).
//!
//! A plugin whose first instance (the one configured at load) asks for a
//! tick period (`proxy_set_tick_period_milliseconds`) or registers a shared
//! queue keeps that instance out of the request pool, as Envoy's singleton
//! VM: its root context gets `proxy_on_tick` every period, and
//! `proxy_on_queue_ready` when something is enqueued to one of the plugin's
//! queues. Request instances' root contexts are never ticked (they are many,
//! and checked out by requests); state a tick refreshes reaches requests
//! through shared data, as it reaches other workers' VMs in Envoy.
//!
//! Each call is a hook call under the plugin's CPU and memory limits. One
//! that traps discards the instance and is counted; the next call, on a new
//! instance (configured again, so it asks for its period again), waits for a
//! backoff that doubles from [`UNHEALTHY_BACKOFF_MIN`] to
//! [`UNHEALTHY_BACKOFF_MAX`]: a failing timer or consumer slows down but never
//! stops for good, and what was enqueued meanwhile stays queued.
//!
//! One thread per engine runs every plugin's background calls, in due order;
//! a plugin leaves it when the plugin is dropped (a reload's old version
//! stops ticking).

use crate::cpu;
use crate::error::{classify, PluginError};
use crate::plugin::{Plugin, Vm, ROOT_CONTEXT};
use crate::{UNHEALTHY_BACKOFF_MAX, UNHEALTHY_BACKOFF_MIN};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Longest the thread sleeps without looking (an enqueue or a new plugin
/// wakes it sooner).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// A timer this far behind (the thread was starved) skips what it missed
/// instead of ticking back to back.
const MAX_CATCH_UP: Duration = Duration::from_secs(1);

/// A plugin's background instance, its timer and its queues' delivery.
#[derive(Default)]
pub(crate) struct Background {
    /// The instance; `None` after a failure, until the next call builds one.
    vm: Option<Vm>,
    /// The tick period asked for; `None`: no timer.
    period: Option<Duration>,
    /// When the next tick is due.
    next_tick: Option<Instant>,
    /// It gets `proxy_on_queue_ready` for the plugin's queues.
    owns_queues: bool,
    /// After a failure: no call before this.
    retry_at: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
}

impl Background {
    /// Keep `vm` as the background instance if it asked for a tick period or
    /// registered a queue; else give it back.
    pub(crate) fn adopt(&mut self, mut vm: Vm) -> Option<Vm> {
        let state = vm.store.data_mut();
        let period = state.tick_period.take().filter(|p| !p.is_zero());
        let owns_queues = state.registered_queue;
        if period.is_none() && !owns_queues {
            return Some(vm);
        }
        *self = Background {
            vm: Some(vm),
            period,
            next_tick: period.map(|p| Instant::now() + p),
            owns_queues,
            retry_at: None,
            backoff: UNHEALTHY_BACKOFF_MIN,
        };
        None
    }
}

impl Plugin {
    /// When this plugin next needs its background instance: its next tick,
    /// or now (or after its backoff) when a queue it owns is ready.
    pub(crate) fn background_due(&self) -> Option<Instant> {
        let bg = self.background.lock().expect("background lock");
        let delivery = (bg.owns_queues && self.shared.queues.any_ready())
            .then(|| bg.retry_at.unwrap_or_else(Instant::now));
        match (bg.next_tick, delivery) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Run what is due: the tick, then the ready queues' deliveries.
    pub(crate) fn run_background(&self) {
        let mut bg = self.background.lock().expect("background lock");
        let now = Instant::now();
        if bg.next_tick.is_some_and(|due| due <= now) {
            self.tick(&mut bg, now);
        }
        if !bg.owns_queues || bg.retry_at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        let ready = self.shared.queues.take_ready();
        for (i, &token) in ready.iter().enumerate() {
            let ran = self.call_background(&mut bg, "proxy_on_queue_ready", |vm| {
                match &vm.exports.on_queue_ready {
                    Some(f) => f.call(&mut vm.store, (ROOT_CONTEXT, token as i32)),
                    None => Ok(()),
                }
            });
            self.shared.delivered(ran);
            if !ran {
                // Delivered later, after the backoff; the items stay queued.
                for &later in &ready[i..] {
                    self.shared.queues.mark_ready(later);
                }
                return;
            }
        }
    }

    /// `proxy_on_tick`, then the next one scheduled (by the period a tick
    /// may have changed or stopped; after a failure, past the backoff).
    fn tick(&self, bg: &mut Background, now: Instant) {
        let (Some(period), Some(due)) = (bg.period, bg.next_tick) else {
            return;
        };
        let ran = self.call_background(bg, "proxy_on_tick", |vm| match &vm.exports.on_tick {
            Some(f) => f.call(&mut vm.store, ROOT_CONTEXT),
            None => Ok(()),
        });
        self.shared.ticked(ran);
        if !ran {
            let retry = bg.retry_at.unwrap_or(now);
            bg.next_tick = Some(retry.max(due + period));
            return;
        }
        // Due times advance by the period (no drift); a thread starved for
        // long skips ahead instead of catching up.
        bg.next_tick = bg.period.map(|p| {
            let next = if p == period { due + p } else { now + p };
            if next + MAX_CATCH_UP < now {
                now + p
            } else {
                next
            }
        });
    }

    /// Run `call` on the background instance (a new one after a failure).
    /// A failure discards the instance, is counted and logged, and sets the
    /// backoff; `false` then.
    fn call_background(
        &self,
        bg: &mut Background,
        hook: &'static str,
        call: impl FnOnce(&mut Vm) -> wasmtime::Result<()>,
    ) -> bool {
        let vm = match bg.vm.take() {
            Some(vm) => Ok(vm),
            None => self.new_vm(),
        };
        let ran = vm.and_then(|mut vm| {
            vm.store.data_mut().store_limits.memory_refused = false;
            cpu::arm(&mut vm.store);
            match call(&mut vm) {
                Ok(()) => Ok(vm),
                Err(e) => Err(classify(&self.name, hook, e)),
            }
        });
        match ran {
            Ok(mut vm) => {
                // The call may have asked for another period, or none (0).
                if let Some(asked) = vm.store.data_mut().tick_period.take() {
                    let asked = (!asked.is_zero()).then_some(asked);
                    if bg.period.is_none() {
                        bg.next_tick = asked.map(|p| Instant::now() + p);
                    }
                    if asked.is_none() {
                        bg.next_tick = None;
                    }
                    bg.period = asked;
                }
                bg.vm = Some(vm);
                bg.retry_at = None;
                bg.backoff = UNHEALTHY_BACKOFF_MIN;
                true
            }
            Err(e) => {
                self.background_failed(bg, &e);
                false
            }
        }
    }

    fn background_failed(&self, bg: &mut Background, e: &PluginError) {
        if let Some(limit) = e.limit() {
            self.shared.hit(limit);
        }
        tracing::warn!(target: "gantry::plugin", plugin = %self.name, error = %e, backoff_ms = bg.backoff.as_millis() as u64, "plugin background call failed; trying again on a new instance after the backoff");
        bg.retry_at = Some(Instant::now() + bg.backoff);
        bg.backoff = (bg.backoff * 2).min(UNHEALTHY_BACKOFF_MAX);
    }
}

/// The engine's background thread and the plugins it serves.
#[derive(Default)]
pub(crate) struct BackgroundThread {
    plugins: Mutex<Vec<Weak<Plugin>>>,
    changed: Condvar,
    /// Set (under the lock) by a wake, so none is lost between a look and a wait.
    woken: AtomicBool,
    stop: AtomicBool,
}

impl BackgroundThread {
    /// Start the thread.
    pub(crate) fn start() -> std::io::Result<Arc<BackgroundThread>> {
        let thread = Arc::new(BackgroundThread::default());
        let run = thread.clone();
        std::thread::Builder::new()
            .name("gantry-plugin-background".into())
            .spawn(move || run.run())?;
        Ok(thread)
    }

    /// Serve `plugin`'s background instance from now on, while it lives.
    pub(crate) fn add(&self, plugin: &Arc<Plugin>) {
        self.plugins
            .lock()
            .expect("background thread lock")
            .push(Arc::downgrade(plugin));
        self.wake();
    }

    /// Look again now (something was enqueued, a plugin added).
    pub(crate) fn wake(&self) {
        let _plugins = self.plugins.lock().expect("background thread lock");
        self.woken.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Stop the thread (the engine is dropped).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
    }

    fn run(&self) {
        let mut plugins = self.plugins.lock().expect("background thread lock");
        while !self.stop.load(Ordering::Relaxed) {
            self.woken.store(false, Ordering::Release);
            plugins.retain(|p| p.strong_count() > 0);
            let live: Vec<Arc<Plugin>> = plugins.iter().filter_map(Weak::upgrade).collect();
            drop(plugins);
            let mut wake = Instant::now() + IDLE_WAKE;
            for p in &live {
                if p.background_due().is_some_and(|due| due <= Instant::now()) {
                    p.run_background();
                }
                if let Some(due) = p.background_due() {
                    wake = wake.min(due);
                }
            }
            drop(live);
            plugins = self.plugins.lock().expect("background thread lock");
            let wait = wake.saturating_duration_since(Instant::now());
            if !wait.is_zero() && !self.woken.load(Ordering::Acquire) {
                plugins = self
                    .changed
                    .wait_timeout(plugins, wait)
                    .expect("background thread lock")
                    .0;
            }
        }
    }
}
