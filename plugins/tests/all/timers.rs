//! Timers: `proxy_set_tick_period_milliseconds` and `proxy_on_tick` on the
//! plugin's background instance, under the plugin's limits.

use crate::sandbox::*;
use gantry_plugins::{Decision, Limit, PluginLimits};
use std::time::Duration;

/// A plugin asking for a tick every 100 ms when its VM starts, whose
/// `proxy_on_tick` runs `on_tick`.
fn ticking(on_tick: &str) -> Vec<u8> {
    module_with(
        "(i32.const 0)",
        "(i32.const 0)",
        &format!(
            r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32)
                 (drop (call $tick (i32.const 100))) (i32.const 1))
               (func (export "proxy_on_tick") (param i32) {on_tick})"#
        ),
    )
}

#[test]
fn a_plugin_ticking_every_100_ms_for_10_s_gets_100_ticks_and_still_serves_requests() {
    let plugin = load(&ticking(""), PluginLimits::default());
    std::thread::sleep(Duration::from_secs(10));
    let (ticks, failed) = plugin.shared().take_ticks();
    assert!((95..=105).contains(&ticks), "{ticks} ticks in 10 s");
    assert_eq!(failed, 0);
    // Requests run on instances of their own, beside the ticking one.
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let d = ctx
        .on_request_headers(&mut request_headers(), true)
        .unwrap();
    assert!(matches!(d, Decision::Continue));
}

#[test]
fn a_tick_that_traps_is_counted_and_retried_on_a_new_instance_after_a_backoff() {
    let plugin = load(&ticking("(unreachable)"), PluginLimits::default());
    // Fails at 0.1 s, then on a new instance 1 s later, then 2 s after that.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(plugin.shared().take_ticks(), (0, 2));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(plugin.shared().take_ticks(), (0, 1), "still trying");
}

#[test]
fn a_tick_that_spins_is_stopped_at_the_cpu_limit() {
    let limits = PluginLimits {
        cpu_per_call: Duration::from_millis(5),
        ..PluginLimits::default()
    };
    let plugin = load(&ticking("(loop (br 0))"), limits);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(plugin.shared().take_ticks(), (0, 1));
    assert_eq!(plugin.shared().take_limit_hits(), vec![(Limit::Cpu, 1)]);
}

#[test]
fn a_tick_may_stop_its_timer() {
    let plugin = load(
        &ticking("(drop (call $tick (i32.const 0)))"),
        PluginLimits::default(),
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(plugin.shared().take_ticks(), (1, 0));
}

#[test]
fn a_plugin_without_a_period_is_never_ticked() {
    let plugin = load(
        &module_with(
            "(i32.const 0)",
            "(i32.const 0)",
            r#"(func (export "proxy_on_tick") (param i32) (unreachable))"#,
        ),
        PluginLimits::default(),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(plugin.shared().take_ticks(), (0, 0));
}
