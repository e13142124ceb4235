//! The plugin host's bounds past a single hook: health and backoff, HTTP
//! calls, body growth, instances, local responses, call timeouts, CPU time
//! on a loaded machine.

use crate::sandbox::*;
use gantry_plugins::{Decision, FailurePolicy, PluginError, PluginLimits};
use std::time::{Duration, Instant};

#[test]
fn repeated_traps_mark_the_plugin_unhealthy_with_backoff() {
    let plugin = load(&module("(unreachable)"), PluginLimits::default());
    for _ in 0..gantry_plugins::UNHEALTHY_AFTER_FAILURES {
        let mut ctx = plugin.start_request(vec![]).unwrap();
        assert!(matches!(
            ctx.on_request_headers(&mut request_headers(), true),
            Err(PluginError::Trap { .. })
        ));
    }
    assert!(plugin.is_unhealthy());
    match plugin.start_request(vec![]) {
        Err(PluginError::Unhealthy { retry_in, .. }) => {
            assert!(retry_in <= gantry_plugins::UNHEALTHY_BACKOFF_MIN)
        }
        other => panic!("an unhealthy plugin ran: {other:?}"),
    }
}

#[test]
fn http_calls_reach_allowed_pools_only_and_the_answer_comes_back_to_the_plugin() {
    // A call to `nope` (not in upstreams) must say BadArgument (2); the call to
    // `side` pauses the request until its answer, which the callback sends back
    // as the local response's body.
    let request = format!(
        "(if (i32.ne {} (i32.const 2)) (then unreachable))
         (if (i32.ne {} (i32.const 0)) (then unreachable))
         (i32.const 1)",
        http_call(80, 4),
        http_call(64, 4)
    );
    let callback = r#"
      (data (i32.const 64) "side")
      (data (i32.const 80) "nope")
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (if (i32.ne (call $buffer (i32.const 4) (i32.const 0) (local.get 3) (i32.const 400) (i32.const 404)) (i32.const 0))
          (then unreachable))
        (drop (call $respond (i32.const 203) (i32.const 0) (i32.const 0)
          (i32.load (i32.const 400)) (i32.load (i32.const 404)) (i32.const 0) (i32.const 0) (i32.const -1))))"#;
    let wasm = module_with(&request, "(i32.const 0)", callback);
    let plugin = load_calling_side(&wasm, PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    let mut seen = Vec::new();
    let decision = ready(ctx.on_request(
        &mut headers,
        None,
        gantry_plugins::http_only(|call| {
            seen.push(call.upstream.clone());
            async move {
                Some(gantry_plugins::HttpCallResponse {
                    headers: vec![(":status".into(), "200".into())],
                    body: format!("answer to {}", call.token).into_bytes(),
                })
            }
        }),
    ))
    .unwrap();
    assert_eq!(seen, ["side"], "only the allowed call is made");
    match decision {
        Decision::Respond(r) => {
            assert_eq!(r.status, 203);
            assert!(String::from_utf8(r.body).unwrap().starts_with("answer to "));
        }
        other => panic!("expected the callback's local response, got {other:?}"),
    }
}

#[test]
fn too_many_http_calls_trap_at_the_limit() {
    let request = format!(
        "(drop {c}) (drop {c}) (drop {c}) (i32.const 1)",
        c = http_call(64, 4)
    );
    let wasm = module_with(&request, "(i32.const 0)", r#"(data (i32.const 64) "side")"#);
    let limits = PluginLimits {
        max_http_calls: 2,
        ..PluginLimits::default()
    };
    let plugin = load_calling_side(&wasm, limits);
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    let err = ready(ctx.on_request(
        &mut headers,
        None,
        gantry_plugins::http_only(|_| async { None }),
    ))
    .unwrap_err();
    match err {
        PluginError::Trap { limit, reason, .. } => {
            assert_eq!(limit.map(gantry_plugins::Limit::as_str), Some("http_calls"));
            assert!(reason.contains("max_http_calls"), "{reason}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[test]
fn a_request_body_hook_sees_the_whole_body_and_may_replace_it() {
    // Headers pause (waiting for the body); the body hook replaces the body with
    // "hello" once it has all of it.
    let body_hook = r#"
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
        (if (i32.eqz (local.get 2)) (then unreachable))
        (drop (call $set (i32.const 0) (i32.const 0) (local.get 1) (i32.const 48) (i32.const 5)))
        (i32.const 0))"#;
    let wasm = module_with("(i32.const 1)", "(i32.const 0)", body_hook);
    let plugin = load(&wasm, PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    let mut body = b"the original body".to_vec();
    let decision = ready(ctx.on_request(
        &mut headers,
        Some(&mut body),
        gantry_plugins::http_only(|_| async { None }),
    ))
    .unwrap();
    assert_eq!(decision, Decision::Continue);
    assert_eq!(body, b"hello");
}

#[test]
fn a_module_that_compiles_too_slowly_is_refused() {
    // Thousands of functions: far more than a millisecond of compilation.
    let body: String = (0..4000)
        .map(|i| format!("(func (export \"f{i}\") (param i32) (result i32) (i32.mul (i32.add (local.get 0) (i32.const {i})) (i32.const 7)))"))
        .collect();
    let wasm = module_with("(i32.const 0)", "(i32.const 0)", &body);
    let limits = PluginLimits {
        max_compile: Duration::from_millis(1),
        ..PluginLimits::default()
    };
    let err = engine()
        .load(
            "slow",
            &wasm,
            vec![],
            limits,
            FailurePolicy::Closed,
            Vec::new(),
        )
        .unwrap_err();
    assert!(matches!(err, PluginError::CompileTimeout { .. }), "{err}");
    assert!(err.to_string().contains("max_compile_ms"), "{err}");
    // The same module with the default limit loads.
    engine()
        .load(
            "slow",
            &wasm,
            vec![],
            PluginLimits::default(),
            FailurePolicy::Closed,
            Vec::new(),
        )
        .expect("compiles within the default limit");
}

#[test]
fn a_trap_after_a_refused_memory_grow_counts_as_the_memory_limit() {
    // What a Rust guest does when its allocator cannot grow: abort (a trap).
    let wasm = module(
        "(if (i32.eq (memory.grow (i32.const 1024)) (i32.const -1)) (then unreachable))
         (i32.const 0)",
    );
    let limits = PluginLimits {
        memory_bytes: 2 << 20,
        ..PluginLimits::default()
    };
    match run(&wasm, limits) {
        Err(PluginError::Trap { limit, reason, .. }) => {
            assert_eq!(limit.map(gantry_plugins::Limit::as_str), Some("memory"));
            assert!(reason.contains("memory_bytes"), "{reason}");
        }
        other => panic!("expected a memory trap, got {other:?}"),
    }
}

#[test]
fn the_response_phase_reads_the_request_headers_as_sent_but_cannot_change_them() {
    let request = "(drop (call $add (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 1))) (i32.const 0)";
    // Copy the request's x-a into the response; removing it from the request
    // now must be refused (InternalFailure, 10).
    let response = "(if (i32.ne (call $get (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 500) (i32.const 504)) (i32.const 0))
           (then unreachable))
         (drop (call $add (i32.const 2) (i32.const 16) (i32.const 3) (i32.load (i32.const 500)) (i32.load (i32.const 504))))
         (if (i32.ne (call $remove (i32.const 0) (i32.const 16) (i32.const 3)) (i32.const 10))
           (then unreachable))
         (i32.const 0)";
    let plugin = load(&module_with(request, response, ""), PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    let d = ready(ctx.on_request(
        &mut headers,
        None,
        gantry_plugins::http_only(|_| async { None }),
    ))
    .unwrap();
    assert_eq!(d, Decision::Continue);
    assert!(headers.contains(&("x-a".into(), "1".into())));
    ctx.keep_request_headers(headers);
    let mut response_headers = vec![(":status".to_string(), "200".to_string())];
    let d = ctx
        .on_response_headers(&mut response_headers, false)
        .unwrap();
    assert_eq!(d, Decision::Continue);
    assert!(
        response_headers.contains(&("x-a".into(), "1".into())),
        "{response_headers:?}"
    );
}

#[test]
fn by_default_every_instance_that_may_run_at_once_stays_warm() {
    // A gateway at `max_instances` concurrent requests must not build a new
    // instance per request: measured, that was 60 % of a plugin route's
    // throughput (bench/run.sh, `noop` plugin).
    let limits = PluginLimits::default();
    let plugin = load(&module("(i32.const 0)"), limits);
    let held: Vec<_> = (0..limits.max_instances)
        .map(|_| plugin.start_request(Vec::new()).expect("under the cap"))
        .collect();
    drop(held);
    assert_eq!(plugin.idle_instances(), limits.max_instances);
}

#[test]
fn instances_are_capped_per_plugin_and_idle_ones_beyond_the_bound_are_dropped() {
    let limits = PluginLimits {
        max_instances: 3,
        max_idle_instances: 1,
        ..PluginLimits::default()
    };
    let plugin = load(&module("(i32.const 0)"), limits);
    let held: Vec<_> = (0..3)
        .map(|_| plugin.start_request(Vec::new()).expect("under the cap"))
        .collect();
    assert_eq!(plugin.instances_in_use(), 3);
    for _ in 0..5 {
        match plugin.start_request(Vec::new()) {
            Err(PluginError::Busy { max_instances, .. }) => assert_eq!(max_instances, 3),
            other => panic!("expected Busy, got {other:?}"),
        }
    }
    assert!(
        !plugin.is_unhealthy(),
        "busy is not a failure (5 of them would trip it)"
    );
    drop(held);
    assert_eq!(plugin.instances_in_use(), 0);
    assert_eq!(
        plugin.idle_instances(),
        1,
        "only max_idle_instances are kept"
    );
    // A trapped instance frees its slot too.
    let trapping = load(&module("(unreachable)"), limits);
    for _ in 0..4 {
        let mut hc = trapping.start_request(Vec::new()).expect("slot free again");
        let mut headers = request_headers();
        assert!(hc.on_request_headers(&mut headers, true).is_err());
    }
    assert_eq!(trapping.instances_in_use(), 0);
}

/// An engine whose slots are all taken (a reload's new version filling while
/// the old one's requests finish) answers Busy, like a plugin at its own cap:
/// not the plugin's failure, so it never counts towards unhealthy.
#[test]
fn a_full_engine_answers_busy_not_a_plugin_failure() {
    let engine = gantry_plugins::PluginEngine::with_capacity(gantry_plugins::EngineCapacity {
        instances: 2,
        memory_bytes: 64 << 20,
    })
    .unwrap();
    let limits = PluginLimits {
        max_instances: 8,
        ..PluginLimits::default()
    };
    let plugin = engine
        .load(
            "t",
            &module("(i32.const 0)"),
            Vec::new(),
            limits,
            FailurePolicy::Closed,
            Vec::new(),
        )
        .expect("plugin loads");
    // Loading kept one instance idle: it and one more fill the engine.
    let held: Vec<_> = (0..2)
        .map(|_| plugin.start_request(Vec::new()).expect("a slot"))
        .collect();
    for _ in 0..gantry_plugins::UNHEALTHY_AFTER_FAILURES + 1 {
        match plugin.start_request(Vec::new()) {
            Err(e @ PluginError::Busy { engine_full, .. }) => {
                assert!(engine_full);
                assert!(
                    e.to_string()
                        .contains("every instance slot of the plugin engine is in use"),
                    "{e}"
                );
            }
            other => panic!("expected Busy, got {other:?}"),
        }
    }
    assert!(
        !plugin.is_unhealthy(),
        "a full engine is not the plugin's failure"
    );
    assert_eq!(plugin.instances_in_use(), 2, "refusals hold no slot");
    drop(held);
    plugin
        .start_request(Vec::new())
        .expect("a slot is free again");
}

#[test]
fn a_plugin_cannot_grow_a_request_body_past_the_routes_limit() {
    // The body hook writes 5 bytes ("hello") at the end of the body, again and
    // again: past max_request_body_bytes the host refuses (BadArgument, 2),
    // which the hook returns as its action's proof.
    let body_hook = r#"
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
        (local $status i32)
        (local $size i32)
        (local.set $size (local.get 1))
        (block $done
          (loop $grow
            (local.set $status (call $set (i32.const 0) (local.get $size) (i32.const 0) (i32.const 48) (i32.const 5)))
            (br_if $done (i32.ne (local.get $status) (i32.const 0)))
            (local.set $size (i32.add (local.get $size) (i32.const 5)))
            (br $grow)))
        (if (i32.ne (local.get $status) (i32.const 2)) (then unreachable))
        (i32.const 0))"#;
    let wasm = module_with("(i32.const 1)", "(i32.const 0)", body_hook);
    let limits = PluginLimits {
        max_request_body_bytes: 100,
        ..PluginLimits::default()
    };
    let plugin = load(&wasm, limits);
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    let mut body = b"start".to_vec();
    let decision = ready(ctx.on_request(
        &mut headers,
        Some(&mut body),
        gantry_plugins::http_only(|_| async { None }),
    ))
    .unwrap();
    assert_eq!(decision, Decision::Continue, "refused, not trapped");
    assert_eq!(body.len(), 100);
    assert_eq!(
        plugin.shared().take_limit_hits(),
        vec![(gantry_plugins::Limit::BodyBytes, 1)]
    );
}

#[test]
fn local_responses_carry_no_framing_and_count_their_headers() {
    // A local response with content-length, transfer-encoding, connection and
    // one ordinary header (map encoded at 512).
    let pairs: &[(&str, &str)] = &[
        ("content-length", "999"),
        ("Transfer-Encoding", "chunked"),
        ("connection", "close"),
        ("x-ok", "1"),
    ];
    let map = gantry_plugins::abi::encode_map(
        &pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
    );
    let data: String = map.iter().map(|b| format!("\\{b:02x}")).collect();
    let respond = format!(
        "(drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 48) (i32.const 5) (i32.const 512) (i32.const {}) (i32.const -1))) (i32.const 1)",
        map.len()
    );
    let extra = format!(r#"(data (i32.const 512) "{data}")"#);
    let wasm = module_with(&respond, "(i32.const 0)", &extra);
    let plugin = load(&wasm, PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    match ctx.on_request_headers(&mut headers, true).unwrap() {
        Decision::Respond(r) => {
            assert_eq!(r.headers, vec![("x-ok".to_string(), "1".to_string())]);
            assert_eq!(r.body, b"hello");
        }
        other => panic!("expected a local response, got {other:?}"),
    }
    // With no header allowed, the one ordinary header is over the limit.
    let strict = PluginLimits {
        max_headers_added: 0,
        ..PluginLimits::default()
    };
    let plugin = load(&wasm, strict);
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    match ctx.on_request_headers(&mut headers, true) {
        Err(PluginError::Trap { limit, .. }) => assert_eq!(
            limit.map(gantry_plugins::Limit::as_str),
            Some("headers_added")
        ),
        other => panic!("expected the headers_added limit, got {other:?}"),
    }
}

#[test]
fn http_call_timeouts_are_clamped_to_the_plugins_maximum() {
    // Three calls: timeout 0 (none), 1000 ms, and 4 000 000 000 ms (u32).
    let call = |timeout: &str| {
        format!("(drop (call $http_call (i32.const 64) (i32.const 4) (i32.const 200) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const {timeout}) (i32.const 300)))")
    };
    let request = format!(
        "{} {} {} (i32.const 1)",
        call("0"),
        call("1000"),
        call("-294967296")
    );
    let wasm = module_with(&request, "(i32.const 0)", r#"(data (i32.const 64) "side")"#);
    let limits = PluginLimits {
        max_http_call_timeout: Duration::from_secs(5),
        ..PluginLimits::default()
    };
    let plugin = load_calling_side(&wasm, limits);
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    let mut timeouts = Vec::new();
    let _ = ready(ctx.on_request(
        &mut headers,
        None,
        gantry_plugins::http_only(|call| {
            timeouts.push(call.timeout);
            async { None }
        }),
    ));
    assert_eq!(
        timeouts,
        [
            Duration::from_secs(5),
            Duration::from_secs(1),
            Duration::from_secs(5)
        ]
    );
}

/// A module whose request-headers hook counts down from `n` (pure CPU).
fn spinning(n: u64) -> Vec<u8> {
    module(&format!(
        "(local $i i64) (local.set $i (i64.const {n}))
         (block $done (loop $spin
           (br_if $done (i64.eqz (local.get $i)))
           (local.set $i (i64.sub (local.get $i) (i64.const 1)))
           (br $spin)))
         (i32.const 0)"
    ))
}

#[test]
fn a_loaded_machine_does_not_turn_a_short_hook_into_a_cpu_trap() {
    let limits = PluginLimits {
        cpu_per_call: Duration::from_millis(5),
        ..PluginLimits::default()
    };
    // Calibrate a hook that needs about 1.5 ms of CPU, unloaded.
    let probe = load(&spinning(1_000_000), limits);
    let mut ctx = probe.start_request(vec![]).unwrap();
    let started = Instant::now();
    ctx.on_request_headers(&mut request_headers(), true)
        .unwrap();
    let per_million = started.elapsed().max(Duration::from_micros(50));
    drop(ctx);
    let n = (1.5e6 / per_million.as_secs_f64() / 1e3) as u64;
    let plugin = load(&spinning(n.max(1)), limits);
    // Eight threads that only burn CPU: each hook call now shares the cores.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burners: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    while calls < 20 || (slowest <= limits.cpu_per_call && calls < 300) {
        let mut ctx = plugin.start_request(vec![]).unwrap();
        let started = Instant::now();
        let result = ctx.on_request_headers(&mut request_headers(), true);
        slowest = slowest.max(started.elapsed());
        assert!(
            result.is_ok(),
            "call {calls} trapped after {:?}: {result:?}",
            started.elapsed()
        );
        calls += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    assert!(
        slowest > limits.cpu_per_call,
        "the load made some call take longer than its CPU budget in wall time ({slowest:?})"
    );
}

/// A future ready after `polls` polls (waking itself each time): answers that
/// take different times, without a timer.
struct After {
    polls: u32,
    answer: Option<gantry_plugins::HttpCallResponse>,
}

impl std::future::Future for After {
    type Output = Option<gantry_plugins::HttpCallResponse>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.polls == 0 {
            return std::task::Poll::Ready(self.answer.take());
        }
        self.polls -= 1;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[test]
fn calls_from_one_context_run_at_once_and_are_answered_as_they_complete() {
    // Two calls (tokens 1 and 2); the first answer's token is kept at 500,
    // the second callback answers 500 + 10 × first + second.
    let request = format!(
        "(drop {}) (drop {}) (i32.const 1)",
        http_call(64, 4),
        http_call(64, 4)
    );
    let callback = r#"
      (data (i32.const 64) "side")
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (if (i32.eqz (i32.load (i32.const 500)))
          (then (i32.store (i32.const 500) (local.get 1)))
          (else (drop (call $respond
            (i32.add (i32.const 500)
              (i32.add (i32.mul (i32.const 10) (i32.load (i32.const 500))) (local.get 1)))
            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1))))))"#;
    let wasm = module_with(&request, "(i32.const 0)", callback);
    let plugin = load_calling_side(&wasm, PluginLimits::default());
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut started = Vec::new();
    let decision = ready(ctx.on_request(
        &mut request_headers(),
        None,
        gantry_plugins::http_only(|call| {
            started.push(call.token);
            // The first call is the slower one.
            After {
                polls: if call.token == 1 { 5 } else { 1 },
                answer: Some(gantry_plugins::HttpCallResponse::default()),
            }
        }),
    ))
    .unwrap();
    assert_eq!(started, [1, 2], "both started before either was answered");
    assert!(
        matches!(&decision, Decision::Respond(r) if r.status == 521),
        "answered in completion order (2, then 1): {decision:?}"
    );
}
