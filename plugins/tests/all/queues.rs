//! Shared queues: registered by the plugin's first instance (its background
//! instance then gets `proxy_on_queue_ready`), enqueued from requests,
//! bounded by `shared_queue_bytes`.

use crate::sandbox::*;
use gantry_plugins::{Decision, Limit, PluginLimits, SHARED_QUEUE_ENTRY_BYTES};
use std::time::Duration;

/// A plugin registering the queue "jobs" (token kept at 400) when its VM
/// starts; each request enqueues "hello" to the queue it resolves by name and
/// answers with status 500 + the enqueue's status; `on_queue_ready` runs
/// `on_ready` (the token at 400; the item's pointer and size go to 404, 408).
fn queueing(on_ready: &str) -> Vec<u8> {
    module_with(
        r#"(drop (call $resolve (i32.const 0) (i32.const 0) (i32.const 64) (i32.const 4) (i32.const 412)))
           (drop (call $respond
             (i32.add (i32.const 500)
               (call $enqueue (i32.load (i32.const 412)) (i32.const 48) (i32.const 5)))
             (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
           (i32.const 0)"#,
        "(i32.const 0)",
        &format!(
            r#"(data (i32.const 64) "jobs")
               (data (i32.const 80) "got")
               (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
                 (drop (call $register (i32.const 64) (i32.const 4) (i32.const 400))) (i32.const 1))
               (func (export "proxy_on_queue_ready") (param i32 i32) {on_ready})"#
        ),
    )
}

/// `on_ready` that dequeues one item into shared data under "got".
const KEEP: &str = r#"(drop (call $dequeue (i32.load (i32.const 400)) (i32.const 404) (i32.const 408)))
    (drop (call $set_data (i32.const 80) (i32.const 3)
      (i32.load (i32.const 404)) (i32.load (i32.const 408)) (i32.const 0)))"#;

fn enqueue_status(plugin: &std::sync::Arc<gantry_plugins::Plugin>) -> u32 {
    let mut ctx = plugin.start_request(vec![]).unwrap();
    match ctx
        .on_request_headers(&mut request_headers(), true)
        .unwrap()
    {
        Decision::Respond(r) => u32::from(r.status) - 500,
        other => panic!("{other:?}"),
    }
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: not within 2 s");
}

#[test]
fn what_a_request_enqueues_reaches_the_background_instance() {
    let plugin = load(&queueing(KEEP), PluginLimits::default());
    assert_eq!(enqueue_status(&plugin), 0, "Ok");
    eventually("delivered", || plugin.shared().data("got").is_some());
    assert_eq!(plugin.shared().data("got").unwrap(), b"hello");
    assert_eq!(plugin.shared().take_deliveries(), (1, 0));
    assert_eq!(
        plugin.shared().queue_bytes(),
        4 + SHARED_QUEUE_ENTRY_BYTES,
        "dequeued"
    );
}

#[test]
fn a_full_queue_refuses_and_counts_never_waits() {
    let limits = PluginLimits {
        shared_queue_bytes: 4 + SHARED_QUEUE_ENTRY_BYTES + 2 * (5 + SHARED_QUEUE_ENTRY_BYTES),
        ..PluginLimits::default()
    };
    // A consumer that never dequeues.
    let plugin = load(&queueing(""), limits);
    assert_eq!(enqueue_status(&plugin), 0);
    assert_eq!(enqueue_status(&plugin), 0);
    assert_eq!(enqueue_status(&plugin), 2, "BadArgument");
    assert_eq!(
        plugin.shared().take_limit_hits(),
        vec![(Limit::SharedQueueBytes, 1)]
    );
}

#[test]
fn a_consumer_that_traps_keeps_the_items_and_is_retried_after_a_backoff() {
    let plugin = load(&queueing("(unreachable)"), PluginLimits::default());
    assert_eq!(enqueue_status(&plugin), 0);
    eventually("the failed delivery", || {
        plugin.shared().take_deliveries().1 == 1
    });
    assert_eq!(
        plugin.shared().queue_bytes(),
        4 + 5 + 2 * SHARED_QUEUE_ENTRY_BYTES,
        "kept"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        plugin.shared().take_deliveries(),
        (0, 0),
        "within the backoff"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        plugin.shared().take_deliveries(),
        (0, 1),
        "retried after 1 s"
    );
}

#[test]
fn unknown_queues_and_empty_ones_say_so() {
    // A request dequeues from token 99 (NotFound) and, after registering,
    // from an empty queue (Empty): answered as 500 + status * 10 + status.
    let wasm = module_with(
        r#"(drop (call $register (i32.const 64) (i32.const 4) (i32.const 400)))
           (drop (call $respond
             (i32.add (i32.const 500)
               (i32.add
                 (i32.mul (i32.const 10) (call $dequeue (i32.const 99) (i32.const 404) (i32.const 408)))
                 (call $dequeue (i32.load (i32.const 400)) (i32.const 404) (i32.const 408))))
             (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
           (i32.const 0)"#,
        "(i32.const 0)",
        r#"(data (i32.const 64) "jobs")"#,
    );
    let plugin = load(&wasm, PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    match ctx
        .on_request_headers(&mut request_headers(), true)
        .unwrap()
    {
        Decision::Respond(r) => assert_eq!(r.status, 500 + 10 + 7, "NotFound, then Empty"),
        other => panic!("{other:?}"),
    }
}
