//! Plugins' timers through the gateway (an unmodified proxy-wasm SDK plugin
//! `local-ratelimit` whose `on_tick` starts each rate window), and a plugin
//! closing the stream (`proxy_close_stream`).

use crate::harness::*;
use crate::plugins::{config, example, route};
use std::time::Duration;

#[tokio::test]
async fn a_timer_in_an_sdk_plugin_opens_each_new_window() {
    let origin = Origin::start("o").await;
    let file = example("local_ratelimit");
    let configuration = "configuration = { requests_per_window = 5, window_ms = 1000 }";
    let gw = Gateway::start(&config(
        origin.addr,
        &[route(
            "r",
            "/",
            &[("local-ratelimit", &file, configuration)],
        )],
    ))
    .await;
    // Each window lets 5 requests through and answers the rest 429: the
    // window is the tick's, not the test's, so count over two windows.
    let mut per_window = Vec::new();
    for _ in 0..2 {
        let (mut ok, mut limited) = (0, 0);
        for _ in 0..8 {
            let res = gw.get("/").await;
            match res.status().as_u16() {
                200 => ok += 1,
                429 => {
                    assert_eq!(res.headers()["retry-after"], "1");
                    let body = json(res).await;
                    assert_eq!(body["error"]["code"], "rate_limited");
                    limited += 1;
                }
                s => panic!("status {s}"),
            }
        }
        per_window.push((ok, limited));
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    for (ok, limited) in &per_window {
        // A tick may land inside a burst of 8: at most 5 more then.
        assert!((5..=8).contains(ok) && ok + limited == 8, "{per_window:?}");
    }
    assert!(
        per_window.iter().any(|(_, limited)| *limited > 0),
        "the limit held within a window: {per_window:?}"
    );
    let ticks = "gantry_plugin_calls_total{hook=\"tick\",outcome=\"continue\",plugin=\"local-ratelimit\",route=\"r\"}";
    let counted = gw.metric(ticks).await.unwrap_or(0.0);
    assert!(counted >= 2.0, "{counted} ticks counted");
}

#[tokio::test]
async fn a_plugin_that_closes_the_stream_gets_the_client_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let wasm = crate::plugins::wat_module(
        r#"(import "env" "proxy_close_stream" (func $close (param i32) (result i32)))"#,
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $close (i32.const 0))) (i32.const 0))"#,
    );
    let file = dir.path().join("closer.wasm");
    std::fs::write(&file, wasm).unwrap();
    let gw = Gateway::start(&config(
        origin.addr,
        &[route("r", "/", &[("closer", &file, "")])],
    ))
    .await;
    let res = gw.client.get(gw.url("/")).send().await;
    assert!(res.is_err(), "no answer: {res:?}");
    assert_eq!(origin.hits(), 0);
    let closed = "gantry_plugin_calls_total{hook=\"request\",outcome=\"close\",plugin=\"closer\",route=\"r\"}";
    assert_eq!(gw.metric(closed).await, Some(1.0));
}
