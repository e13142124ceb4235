//! A plugin that asks a gRPC service before a request proceeds: the unmodified
//! SDK plugin `grpc-ratelimit` against the fixture rate-limit service (Envoy's
//! `RateLimitService` shape, a tonic server), and what happens when the
//! service is down.

use crate::harness::*;
use crate::plugins::{config, example, route};
use gantry_fixture_backend::ratelimit::RateLimitFixture;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

/// One route `r` on `/` with `grpc-ratelimit` asking the pool `ratelimit`
/// (the service at `service`) about each request's `x-api-key`.
fn ratelimit_config(origin: SocketAddr, service: SocketAddr, deny: bool) -> String {
    let file = example("grpc_ratelimit");
    let plugin = format!(
        "upstreams = [\"ratelimit\"]\nconfiguration = {{ upstream = \"ratelimit\", domain = \"gantry\", \
         entries = [{{ key = \"api_key\", header = \"x-api-key\" }}], failure_mode_deny = {deny} }}"
    );
    format!(
        "{}\n[[pools]]\nname = \"ratelimit\"\nendpoints = [\"{service}\"]\n",
        config(
            origin,
            &[route("r", "/", &[("grpc-ratelimit", &file, &plugin)])]
        )
    )
}

async fn status_for(gw: &Gateway, key: &str) -> u16 {
    let res = gw
        .client
        .get(gw.url("/"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    if res.status() == 429 {
        assert_eq!(res.headers()["x-envoy-ratelimited"], "true");
    }
    res.status().as_u16()
}

#[tokio::test]
async fn an_sdk_plugin_follows_every_decision_of_the_rate_limit_service() {
    let origin = Origin::start("o").await;
    let service = RateLimitFixture::start("127.0.0.1:0".parse().unwrap());
    let gw = Gateway::start(&ratelimit_config(origin.addr, service.addr, true)).await;
    let mut followed = 0;
    for i in 0..1000 {
        // The service says OVER_LIMIT for values starting with "over".
        let (key, expected) = match i % 3 {
            0 => (format!("over-{i}"), 429),
            _ => (format!("ok-{i}"), 200),
        };
        if status_for(&gw, &key).await == expected {
            followed += 1;
        }
    }
    assert_eq!(followed, 1000, "decisions followed, of 1000");
    assert_eq!(service.decided.load(Ordering::Relaxed), 1000);
    assert_eq!(origin.hits(), 666, "only what the service let through");
    // A request without the header is not asked about.
    assert_eq!(gw.get("/").await.status(), 200);
    assert_eq!(service.decided.load(Ordering::Relaxed), 1000);
    let ok = "gantry_plugin_grpc_calls_total{plugin=\"grpc-ratelimit\",result=\"ok\",upstream=\"ratelimit\"}";
    assert_eq!(gw.metric(ok).await, Some(1000.0));
}

#[tokio::test]
async fn when_the_service_is_down_the_plugin_fails_open_or_closed_as_configured() {
    let origin = Origin::start("o").await;
    let mut service = RateLimitFixture::start("127.0.0.1:0".parse().unwrap());
    let down = service.addr;
    service.kill();
    for (deny, expected) in [(false, 200), (true, 500)] {
        let gw = Gateway::start(&ratelimit_config(origin.addr, down, deny)).await;
        for key in ["ok-1", "over-1"] {
            assert_eq!(
                status_for(&gw, key).await,
                expected,
                "failure_mode_deny = {deny}"
            );
        }
        let failed = "gantry_plugin_grpc_calls_total{plugin=\"grpc-ratelimit\",result=\"failed\",upstream=\"ratelimit\"}";
        assert_eq!(gw.metric(failed).await, Some(2.0));
    }
    assert_eq!(origin.hits(), 2, "only the fail-open requests went through");
}

#[tokio::test]
async fn a_pool_checked_over_grpc_health_ejects_a_dead_service() {
    let origin = Origin::start("o").await;
    let mut service = RateLimitFixture::start("127.0.0.1:0".parse().unwrap());
    let check = "[pools.health_check]\nkind = \"grpc\"\ninterval_ms = 100\nhealthy_threshold = 1\nunhealthy_threshold = 1\n";
    // `not-grpc`: an HTTP/1.1 server, which accepts connections (a `tcp`
    // check would pass) but does not speak gRPC's health service.
    let text = format!(
        "{}{check}[[pools]]\nname = \"not-grpc\"\nendpoints = [\"{}\"]\n{check}",
        ratelimit_config(origin.addr, service.addr, true),
        origin.addr
    );
    let gw = Gateway::start(&text).await;
    let healthy = format!(
        "gantry_upstream_endpoint_healthy{{endpoint=\"{}\",pool=\"ratelimit\"}}",
        service.addr
    );
    let gw = &gw;
    let healthy = healthy.as_str();
    eventually("checked healthy", || async move {
        gw.metric(healthy).await == Some(1.0)
    })
    .await;
    assert_eq!(status_for(gw, "ok-1").await, 200);
    let not_grpc = format!(
        "gantry_upstream_endpoint_healthy{{endpoint=\"{}\",pool=\"not-grpc\"}}",
        origin.addr
    );
    let not_grpc = not_grpc.as_str();
    eventually("the HTTP/1.1 server ejected", || async move {
        gw.metric(not_grpc).await == Some(0.0)
    })
    .await;
    service.kill();
    eventually("ejected", || async move {
        gw.metric(healthy).await == Some(0.0)
    })
    .await;
    // No healthy endpoint: the call fails at once, and the plugin fails closed.
    assert_eq!(status_for(gw, "ok-2").await, 500);
}

/// `bytes` as a WAT data string.
fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

#[tokio::test]
async fn a_plugin_streams_from_a_grpc_service_and_hears_every_event_in_order() {
    use prost::Message as _;
    // The fixture backend's server-streaming Generate, reached as an HTTP
    // pool: the plugin sends one request, ends its sending half, logs each
    // callback as a letter and answers the log when the stream closes.
    let fixture = gantry_fixture_backend::Fixture::start(gantry_fixture_backend::Behaviour {
        tokens: 3,
        ..Default::default()
    });
    let model = gantry_fixture_backend::Behaviour::default().models[0].clone();
    let request = gantry_proto::GenerateRequest {
        model,
        input: Some(gantry_proto::generate_request::Input::Prompt("hi".into())),
        ..Default::default()
    }
    .encode_to_vec();
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let log = |letter: u8| {
        format!(
            "(i32.store8 (i32.add (i32.const 600) (i32.load (i32.const 596))) (i32.const {letter}))
             (i32.store (i32.const 596) (i32.add (i32.load (i32.const 596)) (i32.const 1)))"
        )
    };
    let service = "gantry.inference.v1.Inference";
    let wasm = crate::plugins::wat_module(
        r#"(import "env" "proxy_grpc_stream" (func $stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_grpc_send" (func $send (param i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 16) "gen")
      (data (i32.const 32) "{service}")
      (data (i32.const 80) "Generate")
      (data (i32.const 1000) "{message}")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (i32.ne (call $stream (i32.const 16) (i32.const 3) (i32.const 32) (i32.const {service_len})
                (i32.const 80) (i32.const 8) (i32.const 0) (i32.const 0) (i32.const 300)) (i32.const 0))
          (then unreachable))
        (if (i32.ne (call $send (i32.load (i32.const 300)) (i32.const 1000) (i32.const {message_len}) (i32.const 1))
              (i32.const 0))
          (then unreachable))
        (i32.const 1))
      (func (export "proxy_on_grpc_receive_initial_metadata") (param i32 i32 i32) {i})
      (func (export "proxy_on_grpc_receive") (param i32 i32 i32) {m})
      (func (export "proxy_on_grpc_receive_trailing_metadata") (param i32 i32 i32) {t})
      (func (export "proxy_on_grpc_close") (param i32 i32 i32)
        {c}
        (drop (call $respond (i32.add (i32.const 200) (local.get 2)) (i32.const 0) (i32.const 0)
          (i32.const 600) (i32.load (i32.const 596)) (i32.const 0) (i32.const 0) (i32.const -1))))"#,
            service_len = service.len(),
            message = wat_bytes(&request),
            message_len = request.len(),
            i = log(b'I'),
            m = log(b'M'),
            t = log(b'T'),
            c = log(b'C'),
        ),
    );
    let file = dir.path().join("streamer.wasm");
    std::fs::write(&file, wasm).unwrap();
    let text = format!(
        "{}\n[[pools]]\nname = \"gen\"\nendpoints = [\"{}\"]\n",
        config(
            origin.addr,
            &[route(
                "r",
                "/",
                &[("streamer", &file, "upstreams = [\"gen\"]")]
            )]
        ),
        fixture.addr
    );
    let gw = Gateway::start(&text).await;
    let res = gw.get("/").await;
    assert_eq!(res.status(), 200, "status OK (0) at the close");
    let log = res.text().await.unwrap();
    // Initial metadata, one message per token and the last, trailers, close.
    let messages = log.len() - 3;
    assert!(
        log.starts_with('I')
            && log.ends_with("TC")
            && messages >= 3
            && log[1..1 + messages].bytes().all(|b| b == b'M'),
        "{log}"
    );
    assert_eq!(origin.hits(), 0);
    let ok = "gantry_plugin_grpc_calls_total{plugin=\"streamer\",result=\"ok\",upstream=\"gen\"}";
    assert_eq!(gw.metric(ok).await, Some(1.0));
}

#[tokio::test]
async fn an_answer_over_bytes_per_host_call_fails_the_call_out_of_range() {
    use prost::Message as _;
    // A unary ListModels to the fixture backend, reached as the HTTP pool
    // `gen`: its answer as the body (status 200), or the close's code added
    // to 200 with "closed".
    let fixture = gantry_fixture_backend::Fixture::start(Default::default());
    let service = "gantry.inference.v1.Inference";
    let limit = service.len() + 3;
    let mut direct = gantry_proto::inference_client::InferenceClient::connect(format!(
        "http://{}",
        fixture.addr
    ))
    .await
    .unwrap();
    let models = direct
        .list_models(gantry_proto::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .encode_to_vec();
    assert!(models.len() > limit, "the answer is larger than the limit");
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let wasm = crate::plugins::wat_module(
        r#"(import "env" "proxy_grpc_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_buffer_bytes" (func $buffer (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 16) "gen")
      (data (i32.const 32) "{service}")
      (data (i32.const 80) "ListModels")
      (data (i32.const 96) "closed")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (i32.ne (call $call (i32.const 16) (i32.const 3) (i32.const 32) (i32.const {service_len})
                (i32.const 80) (i32.const 10) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                (i32.const 2000) (i32.const 300)) (i32.const 0))
          (then unreachable))
        (i32.const 1))
      (func (export "proxy_on_grpc_receive") (param i32 i32 i32)
        (drop (call $buffer (i32.const 5) (i32.const 0) (local.get 2) (i32.const 400) (i32.const 404)))
        (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
          (i32.load (i32.const 400)) (i32.load (i32.const 404)) (i32.const 0) (i32.const 0) (i32.const -1))))
      (func (export "proxy_on_grpc_close") (param i32 i32 i32)
        (drop (call $respond (i32.add (i32.const 200) (local.get 2)) (i32.const 0) (i32.const 0)
          (i32.const 96) (i32.const 6) (i32.const 0) (i32.const 0) (i32.const -1))))"#,
            service_len = service.len(),
        ),
    );
    let file = dir.path().join("lister.wasm");
    std::fs::write(&file, wasm).unwrap();
    let text = format!(
        "{}\n[[pools]]\nname = \"gen\"\nendpoints = [\"{}\"]\n",
        config(
            origin.addr,
            &[
                route(
                    "whole",
                    "/whole",
                    &[("lister", &file, "upstreams = [\"gen\"]")]
                ),
                route(
                    "cut",
                    "/cut",
                    &[(
                        "lister",
                        &file,
                        &format!("upstreams = [\"gen\"]\nbytes_per_host_call = {limit}"),
                    )]
                ),
            ]
        ),
        fixture.addr
    );
    let gw = Gateway::start(&text).await;
    let res = gw.get("/whole").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.bytes().await.unwrap(),
        models,
        "the answer, byte for byte"
    );
    let res = gw.get("/cut").await;
    assert_eq!(res.status(), 200 + 11, "OUT_OF_RANGE");
    assert_eq!(res.text().await.unwrap(), "closed");
    assert_eq!(origin.hits(), 0);
}
