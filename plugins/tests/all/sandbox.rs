use gantry_plugins::{Decision, FailurePolicy, PluginEngine, PluginError, PluginLimits};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new().expect("engine"))
}

/// A proxy-wasm module whose request-headers hook runs `body` (WAT instructions
/// leaving an i32 action). Strings: "x-a" at 16, "1" at 32, "hello" at 48.
pub(crate) fn module(body: &str) -> Vec<u8> {
    module_with(body, "(i32.const 0)", "")
}

pub(crate) fn module_with(request_headers: &str, response_headers: &str, extra: &str) -> Vec<u8> {
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
          (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_clear_route_cache" (func $clear_route_cache (result i32)))
          (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
          (import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
          (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
          (import "env" "proxy_set_shared_data" (func $set_data (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
          (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_get_status" (func $status (param i32 i32 i32) (result i32)))
          (import "env" "proxy_close_stream" (func $close (param i32) (result i32)))
          (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_grpc_stream" (func $grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_grpc_send" (func $grpc_send (param i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_grpc_cancel" (func $grpc_cancel (param i32) (result i32)))
          (import "env" "proxy_grpc_close" (func $grpc_close (param i32) (result i32)))
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
pub(crate) fn ready<F: std::future::Future>(f: F) -> F::Output {
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
pub(crate) fn http_call(name: u32, len: u32) -> String {
    format!("(call $http_call (i32.const {name}) (i32.const {len}) (i32.const 200) (i32.const 4) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 300))")
}

pub(crate) fn load(wasm: &[u8], limits: PluginLimits) -> std::sync::Arc<gantry_plugins::Plugin> {
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
pub(crate) fn load_calling_side(
    wasm: &[u8],
    limits: PluginLimits,
) -> std::sync::Arc<gantry_plugins::Plugin> {
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

pub(crate) fn request_headers() -> Vec<(String, String)> {
    vec![(":path".into(), "/".into()), ("host".into(), "x".into())]
}

pub(crate) fn run(
    wasm: &[u8],
    limits: PluginLimits,
) -> Result<(Decision, Vec<(String, String)>), PluginError> {
    let plugin = load(wasm, limits);
    let mut ctx = plugin.start_request(vec![])?;
    let mut headers = request_headers();
    let d = ctx.on_request_headers(&mut headers, true)?;
    Ok((d, headers))
}

/// The gateway writes headers back only when a hook changed them: reading,
/// or a write to the other map, reports no change; every kind of write does.
#[test]
fn only_a_write_marks_a_header_map_changed() {
    const READ: &str = "(drop (call $get (i32.const 0) (i32.const 16) (i32.const 3) (i32.const 900) (i32.const 904))) (i32.const 0)";
    let add = |map: u32| {
        format!("(drop (call $add (i32.const {map}) (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 1))) (i32.const 0)")
    };
    let remove = "(drop (call $remove (i32.const 0) (i32.const 16) (i32.const 3))) (i32.const 0)";
    let cases = [
        (READ.to_string(), READ.to_string(), (false, false)),
        (add(0), READ.to_string(), (true, false)),
        (READ.to_string(), add(2), (false, true)),
        (remove.to_string(), READ.to_string(), (true, false)),
    ];
    for (request, response, expected) in cases {
        let plugin = load(
            &module_with(&request, &response, ""),
            PluginLimits::default(),
        );
        // Twice on one instance: the flags start over with each request.
        for _ in 0..2 {
            let mut ctx = plugin.start_request(vec![]).unwrap();
            let mut headers = request_headers();
            ready(ctx.on_request(
                &mut headers,
                None,
                gantry_plugins::http_only(|_| async { None }),
            ))
            .unwrap();
            assert_eq!(ctx.headers_changed().0, expected.0, "{request}");
            ctx.keep_request_headers(headers);
            let mut resp = vec![(":status".to_string(), "200".to_string())];
            ctx.on_response_headers(&mut resp, false).unwrap();
            assert_eq!(ctx.headers_changed(), expected, "{request} / {response}");
        }
    }
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
        .on_response_body(&mut bytes::Bytes::from_static(b"abc"), true)
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
            (i32.add (i32.const 500) (call $clear_route_cache))
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
