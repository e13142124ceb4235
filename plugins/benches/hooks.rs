//! Microbenchmarks of the plugin host (criterion): one hook call round trip on a
//! context already open, and one request through a plugin (instance checkout,
//! request and response header hooks, context done and the instance returned), for
//! a no-op WAT module and, when built (scripts/build-plugins.sh), the `add-header`
//! example written with the proxy-wasm SDK; and one streamed answer's event
//! through the `token-meter` and `output-redact` examples (the per-event hook
//! of `stream_events`). `bench/plugins.sh` runs it and writes
//! the numbers to docs/BENCHMARKS.md.
//!
//!   cargo bench -p gantry-plugins --bench hooks

use criterion::{criterion_group, criterion_main, Criterion};
use gantry_plugins::{FailurePolicy, Plugin, PluginEngine, PluginLimits};
use std::hint::black_box;
use std::sync::Arc;

const NOOP: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0)))"#;

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A request's headers as the gateway hands them to a plugin (wrk's).
fn request() -> Vec<(String, String)> {
    pairs(&[
        (":method", "GET"),
        (":path", "/plugin"),
        (":authority", "127.0.0.1:18392"),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
    ])
}

/// The origin's answer's headers (a 1 KiB file).
fn response() -> Vec<(String, String)> {
    pairs(&[
        (":status", "200"),
        ("content-type", "text/plain"),
        ("content-length", "1024"),
    ])
}

fn bench_plugin(c: &mut Criterion, label: &str, plugin: &Arc<Plugin>) {
    let (request, response) = (request(), response());
    let props: gantry_plugins::Properties = vec![
        ("request.path".to_string(), b"/plugin".to_vec()),
        ("route_name".to_string(), b"plugin".to_vec()),
    ]
    .into();
    c.bench_function(
        &format!("{label}: hook round trip (request headers)"),
        |b| {
            let mut ctx = plugin.start_request(props.clone()).unwrap();
            b.iter(|| {
                let mut headers = request.clone();
                black_box(ctx.on_request_headers(&mut headers, true).unwrap());
                headers
            });
        },
    );
    c.bench_function(
        &format!("{label}: request phase as the gateway runs it (no calls)"),
        |b| {
            let mut ctx = plugin.start_request(props.clone()).unwrap();
            b.iter(|| {
                let mut headers = request.clone();
                let phase = ctx.on_request(
                    &mut headers,
                    None,
                    gantry_plugins::http_only(|_| async { None }),
                );
                let decision = futures_util::FutureExt::now_or_never(phase);
                black_box(decision.expect("no call to wait for").unwrap());
                headers
            });
        },
    );
    c.bench_function(
        &format!("{label}: one request (checkout, both header hooks, done)"),
        |b| {
            b.iter(|| {
                let mut ctx = plugin.start_request(props.clone()).unwrap();
                let mut headers = request.clone();
                black_box(ctx.on_request_headers(&mut headers, true).unwrap());
                let mut resp = response.clone();
                black_box(ctx.on_response_headers(&mut resp, false).unwrap());
                drop(ctx);
                (headers, resp)
            });
        },
    );
}

/// One whole request in the steady state of a loaded worker: `in_flight`
/// requests hold an instance each, and each iteration ends the oldest (its
/// response header and body hooks, done) and starts a new one (checkout, its
/// request hooks). With many in flight, each request's hooks run on an
/// instance other requests used since, as they do behind a busy listener.
fn bench_in_flight(c: &mut Criterion, label: &str, plugin: &Arc<Plugin>, in_flight: usize) {
    let (request, response) = (request(), response());
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let start = |request: &Vec<(String, String)>| {
        let mut ctx = plugin.start_request(Vec::new()).unwrap();
        let mut headers = request.clone();
        black_box(ctx.on_request_headers(&mut headers, true).unwrap());
        ctx
    };
    c.bench_function(
        &format!("{label}: one whole request, {in_flight} in flight"),
        |b| {
            let mut ring: std::collections::VecDeque<_> =
                (0..in_flight).map(|_| start(&request)).collect();
            b.iter(|| {
                let mut ctx = ring.pop_front().unwrap();
                let mut resp = response.clone();
                black_box(ctx.on_response_headers(&mut resp, false).unwrap());
                let mut chunk = body.clone();
                black_box(ctx.on_response_body(&mut chunk, true).unwrap());
                drop(ctx);
                ring.push_back(start(&request));
                resp
            });
        },
    );
}

/// One server-sent event of a streamed chat answer through `plugin`'s
/// response-body hook (not the end of the stream), on a context already open.
fn bench_event(c: &mut Criterion, label: &str, plugin: &Arc<Plugin>) {
    let event = bytes::Bytes::from_static(
        br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"fixture","choices":[{"index":0,"delta":{"content":"tok7 "},"finish_reason":null}]}

"#,
    );
    c.bench_function(&format!("{label}: one streamed event"), |b| {
        let mut ctx = plugin.start_request(Vec::new()).unwrap();
        b.iter(|| {
            let mut chunk = event.clone();
            black_box(ctx.on_response_body(&mut chunk, false).unwrap());
            chunk
        });
    });
}

fn hooks(c: &mut Criterion) {
    let engine = PluginEngine::new().expect("engine");
    let load = |name: &str, wasm: &[u8], configuration: &[u8]| {
        engine
            .load(
                name,
                wasm,
                configuration.to_vec(),
                PluginLimits::default(),
                FailurePolicy::Closed,
                Vec::new(),
            )
            .expect("loads")
    };
    let noop = load("noop", &wat::parse_str(NOOP).unwrap(), b"");
    bench_plugin(c, "no-op (WAT)", &noop);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/target/wasm32-unknown-unknown/release/add_header.wasm"
    );
    let noop_sdk = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/target/wasm32-unknown-unknown/release/noop.wasm"
    );
    if let Ok(wasm) = std::fs::read(noop_sdk) {
        let sdk = load("noop-sdk", &wasm, b"");
        for in_flight in [1, 50] {
            bench_in_flight(c, "noop (proxy-wasm SDK)", &sdk, in_flight);
        }
    }
    match std::fs::read(example) {
        Ok(wasm) => {
            let config =
                br#"{"request": {"x-team": "edge"}, "response": {"x-served-by": "gantry"}}"#;
            let add = load("add-header", &wasm, config);
            bench_plugin(c, "add-header (proxy-wasm SDK)", &add);
        }
        Err(_) => eprintln!("{example} not built (scripts/build-plugins.sh): skipped"),
    }
    for (name, file, config) in [
        ("token-meter", "token_meter", &b""[..]),
        (
            "output-redact",
            "output_redact",
            br#"{"words": ["secret"]}"#,
        ),
    ] {
        let path = format!(
            "{}/examples/target/wasm32-unknown-unknown/release/{file}.wasm",
            env!("CARGO_MANIFEST_DIR")
        );
        match std::fs::read(&path) {
            Ok(wasm) => bench_event(c, name, &load(name, &wasm, config)),
            Err(_) => eprintln!("{path} not built (scripts/build-plugins.sh): skipped"),
        }
    }
}

criterion_group!(benches, hooks);
criterion_main!(benches);
