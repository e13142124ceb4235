use gantry_plugins::{Decision, FailurePolicy, PluginEngine, PluginError, PluginLimits};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new().expect("engine"))
}

/// A proxy-wasm module whose request-headers hook runs `body` (WAT instructions
/// leaving an i32 action). Strings: "x-a" at 16, "1" at 32, "hello" at 48.
fn module(body: &str) -> Vec<u8> {
    module_with(body, "(i32.const 0)", "")
}

fn module_with(request_headers: &str, response_headers: &str, extra: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
          (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
          (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_buffer_bytes" (func $buffer (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
          (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (global $heap (mut i32) (i32.const 1024))
          (data (i32.const 16) "x-a")
          (data (i32.const 32) "1")
          (data (i32.const 48) "hello")
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $heap))
            (global.set $heap (i32.add (global.get $heap) (local.get $n)))
            (local.get $p))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {request_headers})
          (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) {response_headers})
          {extra}
        )"#
    );
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("{e}\n{wat}"))
}

/// Drive a future whose every await is ready at once (the test's calls answer
/// immediately).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// `proxy_http_call` to the pool named at `name` (`len` bytes), no headers (an
/// empty map: four zero bytes at 200), token written at 300.
fn http_call(name: u32, len: u32) -> String {
    format!("(call $http_call (i32.const {name}) (i32.const {len}) (i32.const 200) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 300))")
}

fn load(wasm: &[u8], limits: PluginLimits) -> std::sync::Arc<gantry_plugins::Plugin> {
    engine()
        .load(
            "t",
            wasm,
            b"cfg".to_vec(),
            limits,
            FailurePolicy::Closed,
            Vec::new(),
        )
        .expect("plugin loads")
}

/// [`load`], for a plugin that may `proxy_http_call` the pool `side`.
fn load_calling_side(wasm: &[u8], limits: PluginLimits) -> std::sync::Arc<gantry_plugins::Plugin> {
    engine()
        .load(
            "t",
            wasm,
            Vec::new(),
            limits,
            FailurePolicy::Closed,
            vec!["side".into()],
        )
        .expect("plugin loads")
}

fn request_headers() -> Vec<(String, String)> {
    vec![(":path".into(), "/".into()), ("host".into(), "x".into())]
}

fn run(
    wasm: &[u8],
    limits: PluginLimits,
) -> Result<(Decision, Vec<(String, String)>), PluginError> {
    let plugin = load(wasm, limits);
    let mut ctx = plugin.start_request(vec![])?;
    let mut headers = request_headers();
    let d = ctx.on_request_headers(&mut headers, true)?;
    Ok((d, headers))
}

#[test]
fn a_plugin_adds_a_header_and_its_instance_is_reused() {
    let wasm = module("(drop (call $add (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 1))) (i32.const 0)");
    let plugin = load(&wasm, PluginLimits::default());
    for _ in 0..3 {
        let mut ctx = plugin.start_request(vec![]).unwrap();
        let mut headers = request_headers();
        assert_eq!(
            ctx.on_request_headers(&mut headers, true).unwrap(),
            Decision::Continue
        );
        assert!(headers.contains(&("x-a".into(), "1".into())), "{headers:?}");
        drop(ctx);
    }
    assert_eq!(
        plugin.idle_instances(),
        1,
        "one instance served every request"
    );
}

#[test]
fn an_infinite_loop_is_interrupted_at_the_cpu_limit() {
    let wasm = module("(loop $l (br $l)) (i32.const 0)");
    let limits = PluginLimits {
        cpu_per_call: Duration::from_millis(5),
        ..PluginLimits::default()
    };
    let started = Instant::now();
    let err = run(&wasm, limits).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    match err {
        PluginError::Trap { limit, hook, .. } => {
            assert_eq!(limit.map(gantry_plugins::Limit::as_str), Some("cpu"));
            assert_eq!(hook, "proxy_on_request_headers");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn memory_cannot_grow_past_the_limit() {
    // Ask for 64 MiB more; with a 2 MiB limit memory.grow answers -1, which this
    // plugin reports as a 507 local response.
    let wasm = module(
        "(if (i32.eq (memory.grow (i32.const 1024)) (i32.const -1))
           (then (drop (call $respond (i32.const 507) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))))
         (i32.const 0)",
    );
    let limits = PluginLimits {
        memory_bytes: 2 << 20,
        ..PluginLimits::default()
    };
    let (d, _) = run(&wasm, limits).unwrap();
    match d {
        Decision::Respond(r) => assert_eq!(r.status, 507),
        other => panic!("memory grew past its limit: {other:?}"),
    }
}

#[test]
fn a_trap_in_any_hook_is_contained_and_the_instance_discarded() {
    let trap = "(unreachable)";
    for (req, resp, hook) in [
        (trap, "(i32.const 0)", "proxy_on_request_headers"),
        ("(i32.const 0)", trap, "proxy_on_response_headers"),
    ] {
        let plugin = load(&module_with(req, resp, ""), PluginLimits::default());
        let mut ctx = plugin.start_request(vec![]).unwrap();
        let mut headers = request_headers();
        let result = ctx.on_request_headers(&mut headers, true).and_then(|_| {
            ctx.on_response_headers(&mut vec![(":status".into(), "200".into())], true)
        });
        match result {
            Err(PluginError::Trap {
                hook: h, reason, ..
            }) => {
                assert_eq!(h, hook);
                assert!(reason.contains("unreachable"), "{reason}");
            }
            other => panic!("{hook}: {other:?}"),
        }
        drop(ctx);
        assert_eq!(
            plugin.idle_instances(),
            0,
            "a trapped instance is not reused"
        );
        // The next request gets a fresh instance and works up to the same trap.
        assert!(plugin.start_request(vec![]).is_ok());
    }
}

#[test]
fn body_hooks_trap_contained_too() {
    let extra = "(func (export \"proxy_on_request_body\") (param i32 i32 i32) (result i32) (unreachable))
                 (func (export \"proxy_on_response_body\") (param i32 i32 i32) (result i32) (unreachable))";
    let plugin = load(
        &module_with("(i32.const 0)", "(i32.const 0)", extra),
        PluginLimits::default(),
    );
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let err = ctx.on_request_body(&mut b"abc".to_vec(), true).unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Trap {
                hook: "proxy_on_request_body",
                ..
            }
        ),
        "{err}"
    );
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let err = ctx
        .on_response_body(&mut b"abc".to_vec(), true)
        .unwrap_err();
    assert!(
        matches!(
            err,
            PluginError::Trap {
                hook: "proxy_on_response_body",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn adding_too_many_headers_traps_at_the_limit() {
    let wasm = module(
        "(local $i i32)
         (loop $l
           (drop (call $add (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 1)))
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
         (i32.const 0)",
    );
    let limits = PluginLimits {
        max_headers_added: 10,
        ..PluginLimits::default()
    };
    match run(&wasm, limits).unwrap_err() {
        PluginError::Trap { limit, reason, .. } => {
            assert_eq!(
                limit.map(gantry_plugins::Limit::as_str),
                Some("headers_added")
            );
            assert!(reason.contains("more than 10 headers"), "{reason}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn out_of_bounds_pointers_get_invalid_memory_access() {
    // proxy_log with a pointer past the end of memory: status 6, reported here as
    // a local response with status 500 + 6.
    let wasm = module(
        "(drop (call $respond
            (i32.add (i32.const 500) (call $log (i32.const 2) (i32.const 65530) (i32.const 100)))
            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
         (i32.const 0)",
    );
    let (d, _) = run(&wasm, PluginLimits::default()).unwrap();
    assert_eq!(
        d,
        Decision::Respond(gantry_plugins::LocalResponse {
            status: 506,
            headers: vec![],
            body: vec![]
        })
    );
    // A return pointer out of bounds: the configuration cannot be delivered there.
    let wasm = module(
        "(drop (call $respond
            (i32.add (i32.const 500) (call $buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 70000) (i32.const 70004)))
            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
         (i32.const 0)",
    );
    let (d, _) = run(&wasm, PluginLimits::default()).unwrap();
    assert!(matches!(d, Decision::Respond(r) if r.status == 506));
}

#[test]
fn copying_too_much_in_one_host_call_traps() {
    let wasm =
        module("(drop (call $log (i32.const 2) (i32.const 0) (i32.const 4096))) (i32.const 0)");
    let limits = PluginLimits {
        bytes_per_host_call: 1024,
        ..PluginLimits::default()
    };
    match run(&wasm, limits).unwrap_err() {
        PluginError::Trap { limit, reason, .. } => {
            assert_eq!(
                limit.map(gantry_plugins::Limit::as_str),
                Some("bytes_per_host_call")
            );
            assert!(
                reason.contains("4096 bytes") && reason.contains("1024"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn unimplemented_abi_calls_say_so() {
    let wasm = module(
        "(drop (call $respond
            (i32.add (i32.const 500) (call $tick (i32.const 100)))
            (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))
         (i32.const 0)",
    );
    let (d, _) = run(&wasm, PluginLimits::default()).unwrap();
    assert!(
        matches!(d, Decision::Respond(r) if r.status == 512),
        "Unimplemented is 12"
    );
}

#[test]
fn modules_that_are_not_proxy_wasm_plugins_are_rejected_with_a_reason() {
    let limits = PluginLimits::default();
    let e = engine()
        .load(
            "p",
            b"not wasm",
            vec![],
            limits,
            FailurePolicy::Closed,
            Vec::new(),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("plugin `p`: not a valid module"),
        "{e}"
    );
    let plain = wat::parse_str("(module (memory (export \"memory\") 1))").unwrap();
    let e = engine()
        .load(
            "p",
            &plain,
            vec![],
            limits,
            FailurePolicy::Closed,
            Vec::new(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("not a proxy-wasm module"), "{e}");
    let wasi = wat::parse_str(
        "(module (import \"wasi_snapshot_preview1\" \"fd_write\" (func (param i32 i32 i32 i32) (result i32)))
                 (func (export \"proxy_abi_version_0_2_1\")))",
    )
    .unwrap();
    let e = engine()
        .load(
            "p",
            &wasi,
            vec![],
            limits,
            FailurePolicy::Closed,
            Vec::new(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("only the proxy-wasm ABI"), "{e}");
    let small = PluginLimits {
        max_module_bytes: 10,
        ..limits
    };
    let e = engine()
        .load(
            "p",
            &plain,
            vec![],
            small,
            FailurePolicy::Closed,
            Vec::new(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("max_module_bytes"), "{e}");
}

#[test]
fn a_plugin_that_rejects_its_configuration_is_not_loaded() {
    let wasm = module_with(
        "(i32.const 0)",
        "(i32.const 0)",
        "(func (export \"proxy_on_configure\") (param i32 i32) (result i32) (i32.const 0))",
    );
    let e = engine()
        .load(
            "picky",
            &wasm,
            b"bad".to_vec(),
            PluginLimits::default(),
            FailurePolicy::Closed,
            Vec::new(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("rejected its configuration"), "{e}");
}

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
    let plugin = engine()
        .load(
            "caller",
            &wasm,
            vec![],
            PluginLimits::default(),
            FailurePolicy::Closed,
            vec!["side".into()],
        )
        .unwrap();
    let mut ctx = plugin.start_request(vec![]).unwrap();
    let mut headers = request_headers();
    let mut seen = Vec::new();
    let decision = ready(ctx.on_request(&mut headers, None, |call| {
        seen.push(call.upstream.clone());
        async move {
            Some(gantry_plugins::HttpCallResponse {
                headers: vec![(":status".into(), "200".into())],
                body: format!("answer to {}", call.token).into_bytes(),
            })
        }
    }))
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
    let err = ready(ctx.on_request(&mut headers, None, |_| async { None })).unwrap_err();
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
    let decision =
        ready(ctx.on_request(&mut headers, Some(&mut body), |_| async { None })).unwrap();
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
    let d = ready(ctx.on_request(&mut headers, None, |_| async { None })).unwrap();
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
    let decision =
        ready(ctx.on_request(&mut headers, Some(&mut body), |_| async { None })).unwrap();
    assert_eq!(decision, Decision::Continue, "refused, not trapped");
    assert_eq!(body.len(), 100);
    assert_eq!(plugin.shared().take_limit_hits(), vec![("body_bytes", 1)]);
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
    let _ = ready(ctx.on_request(&mut headers, None, |call| {
        timeouts.push(call.timeout);
        async { None }
    }));
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
