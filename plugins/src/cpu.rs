//! The CPU limit of a hook call, measured in the calling thread's CPU time.
//!
//! Wall-clock epochs (one tick a millisecond, [`crate::EPOCH_TICK`]) only decide
//! *when* to look: at each tick during a call the host reads the thread's CPU
//! clock, and interrupts the call once it has used `cpu_per_call` of CPU. So a
//! loaded machine, where a 1 ms hook can take several milliseconds of wall time
//! while other threads run, does not turn it into a trap; a guest that loops
//! does burn its budget and is stopped. A call that is starved for CPU is still
//! stopped after [`WALL_FACTOR`] times its budget in wall time, so no request
//! waits unboundedly on a plugin.
//!
//! Calls shorter than a tick cost nothing: the clock is read only when a tick
//! lands inside a call.

use crate::EPOCH_TICK;
use std::time::Duration;
use wasmtime::{StoreContextMut, UpdateDeadline};

/// A call is stopped after this many times its CPU budget in wall time.
pub const WALL_FACTOR: u32 = 20;

/// Where the current call stands, kept in the store.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CallClock {
    /// Thread CPU time at the first tick inside this call.
    cpu_at_first_tick: Option<Duration>,
    /// Ticks seen inside this call.
    ticks: u32,
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Start timing a call: the first check comes at the next tick.
pub(crate) fn arm<T: AsMut<CallClock>>(store: &mut wasmtime::Store<T>) {
    *store.data_mut().as_mut() = CallClock::default();
    store.set_epoch_deadline(1);
}

/// The epoch callback: go on for one more tick while the call is within its
/// CPU budget (and [`WALL_FACTOR`] times that in wall time), else interrupt
/// (a trap the host reports as the `cpu` limit).
pub(crate) fn on_tick<T: AsMut<CallClock>>(
    mut store: StoreContextMut<'_, T>,
    budget: Duration,
) -> wasmtime::Result<UpdateDeadline> {
    let clock = store.data_mut().as_mut();
    clock.ticks += 1;
    let now = thread_cpu();
    let mark = *clock.cpu_at_first_tick.get_or_insert(now);
    // Before the first tick the call used at most one tick of CPU.
    let used = now.saturating_sub(mark) + EPOCH_TICK;
    let wall = EPOCH_TICK * clock.ticks;
    if used > budget || wall > budget * WALL_FACTOR {
        return Ok(UpdateDeadline::Interrupt);
    }
    Ok(UpdateDeadline::Continue(1))
}
