//! Plugins on OpenAI routes. On the answer (`stream_events = true`): the
//! `token-meter` SDK example counts every answer's output tokens, streamed or
//! whole, exactly as the answers' `usage` reports them, and `output-redact`
//! rewrites events the official client still parses. Before the pick: a
//! plugin reads the candidate backends and chooses one, or the model.

use crate::harness::*;
use crate::openai::{ai_config, events};
use crate::plugins::{example, wat_module};
use gantry_fixture_backend::{Behaviour, Fixture};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_meter_counts_exactly_what_the_answers_usage_says() {
    let backend = Fixture::start(Behaviour::default());
    let meter = format!(
        "[[routes.plugins]]\nname = \"token-meter\"\nfile = \"{}\"\nstream_events = true\n",
        example("token_meter").display()
    );
    // The plugin goes on the `openai` route (the first of ai_config's routes).
    let config = ai_config(&[backend.addr], "").replacen(
        "max_body_bytes = 4096\n",
        &format!("max_body_bytes = 4096\n{meter}"),
        1,
    );
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    // 500 streamed answers (and 100 whole ones), each counted exactly.
    let mut expected = 0;
    for i in 0..600u32 {
        let stream = i % 6 != 0;
        let body = json!({"model": "fixture", "max_tokens": 1 + i % 7, "stream": stream,
                          "stream_options": {"include_usage": true},
                          "messages": [{"role": "user", "content": "count"}]});
        let res = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        let usage = if stream {
            let events = events(&text);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
            let usage_event: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            let content: String = events[..events.len() - 2]
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|e| {
                    e["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            assert!(content.starts_with("tok0"), "events unchanged: {text}");
            usage_event["usage"].clone()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
        };
        expected += usage["completion_tokens"].as_u64().unwrap();
    }
    let sample = "gantry_plugin_metric{kind=\"counter\",name=\"output_tokens.anonymous\",plugin=\"token-meter\",route=\"openai\"}";
    assert_eq!(gw.metric(sample).await, Some(expected as f64));
    // The stream's plugin instance went back when each answer ended.
    let idle = gw.metric("gantry_plugin_calls_total{hook=\"response_body\",outcome=\"continue\",plugin=\"token-meter\",route=\"openai\"}").await;
    assert_eq!(idle, Some(600.0), "one end-of-body count per answer");
}

/// What the official `openai` client reads from `gw`: (streamed, whole) text.
async fn read_with_openai_client(gw: &Gateway) -> (String, String) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_stream.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(gw.url(""))
        .output()
        .await
        .expect("python3 runs (scripts/setup.sh installs openai)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        seen["stream"].as_str().unwrap().to_string(),
        seen["whole"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redacting_plugin_rewrites_events_the_official_client_still_parses() {
    let backend = Fixture::start(Behaviour::default());
    let plain = Gateway::start(&ai_config(&[backend.addr], "")).await;
    plain.wait_backend_healthy("ai", backend.addr).await;
    let (original, whole) = read_with_openai_client(&plain).await;
    assert_eq!(original, whole);
    // A word across two events' text (`tok1` ends one, ` tok2` starts the next).
    let word = "1 tok2";
    assert!(original.contains(word), "{original}");
    let redact = format!(
        "[[routes.plugins]]\nname = \"output-redact\"\nfile = \"{}\"\nstream_events = true\n\
         configuration = {{ words = [\"{word}\"], replacement = \"#\" }}\n",
        example("output_redact").display()
    );
    let config = ai_config(&[backend.addr], "").replacen(
        "max_body_bytes = 4096\n",
        &format!("max_body_bytes = 4096\n{redact}"),
        1,
    );
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let expected = original.replace(word, "#");
    assert_eq!(
        read_with_openai_client(&gw).await,
        (expected.clone(), expected)
    );
}

/// A plugin that reads `inference.backends` (trapping when it cannot) and
/// sets `property` to `value`; with `answer_candidates`, it answers with the
/// candidates' JSON instead.
fn chooser(
    dir: &std::path::Path,
    property: &str,
    value: &str,
    answer_candidates: bool,
) -> std::path::PathBuf {
    let path = property.replace('.', "\\00");
    let answer = if answer_candidates {
        "(drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
           (i32.load (i32.const 900)) (i32.load (i32.const 904)) (i32.const 0) (i32.const 0) (i32.const -1)))
         (return (i32.const 1))"
    } else {
        ""
    };
    let wasm = wat_module(
        r#"(import "env" "proxy_get_property" (func $get (param i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_set_property" (func $set (param i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 200) "inference\00backends")
               (data (i32.const 240) "{path}")
               (data (i32.const 300) "{value}")
               (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
                 (if (i32.ne (call $get (i32.const 200) (i32.const 18) (i32.const 900) (i32.const 904)) (i32.const 0))
                   (then unreachable))
                 {answer}
                 (drop (call $set (i32.const 240) (i32.const {}) (i32.const 300) (i32.const {})))
                 (i32.const 0))"#,
            property.len(),
            value.len()
        ),
    );
    let file = dir.join(format!("chooser-{}.wasm", answer_candidates));
    std::fs::write(&file, wasm).unwrap();
    file
}

fn with_plugin(config: String, name: &str, file: &std::path::Path) -> String {
    config.replacen(
        "max_body_bytes = 4096\n",
        &format!(
            "max_body_bytes = 4096\n[[routes.plugins]]\nname = \"{name}\"\nfile = \"{}\"\n",
            file.display()
        ),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_plugin_reads_the_candidates_and_picks_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let backends = [
        Fixture::start(Behaviour::default()),
        Fixture::start(Behaviour::default()),
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = ai_config(&addrs, "");

    // What the plugin sees: both backends, serving.
    let reader = chooser(dir.path(), "inference.backend", "", true);
    let gw = Gateway::start(&with_plugin(config.clone(), "chooser", &reader)).await;
    for a in &addrs {
        gw.wait_backend_healthy("ai", *a).await;
    }
    let res = crate::openai::post(&gw, "/v1/chat/completions", &crate::openai::chat(false)).await;
    assert_eq!(res.status(), 200);
    let seen: Value = json(res).await;
    assert_eq!(seen[0]["pool"], "ai", "{seen}");
    let listed: Vec<&str> = seen[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap())
        .collect();
    for a in &addrs {
        assert!(listed.contains(&a.to_string().as_str()), "{seen}");
    }
    assert!(seen[0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["serving"] == true));

    // Its choice is honoured: every request goes to the second backend.
    let picker = chooser(
        dir.path(),
        "inference.backend",
        &addrs[1].to_string(),
        false,
    );
    let gw = Gateway::start(&with_plugin(config.clone(), "chooser", &picker)).await;
    for a in &addrs {
        gw.wait_backend_healthy("ai", *a).await;
    }
    for _ in 0..20 {
        let res =
            crate::openai::post(&gw, "/v1/chat/completions", &crate::openai::chat(false)).await;
        assert_eq!(res.status(), 200);
    }
    let served = |i: usize| {
        backends[i]
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!((served(0), served(1)), (0, 20));
    assert_eq!(
        gw.metric("gantry_inference_picks_total{pool=\"ai\",reason=\"plugin\"}")
            .await,
        Some(20.0)
    );

    // And the model: a request for a model no pool serves is answered by
    // the one the plugin names.
    let renamer = chooser(dir.path(), "inference.model", "fixture", false);
    let gw = Gateway::start(&with_plugin(config, "chooser", &renamer)).await;
    for a in &addrs {
        gw.wait_backend_healthy("ai", *a).await;
    }
    let body = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]});
    let res = crate::openai::post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(json(res).await["model"], "fixture");
}

#[tokio::test]
async fn a_plugin_may_answer_in_place_of_a_stream_whose_generation_is_then_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Fixture::start(Behaviour {
        tokens: 50,
        inter_token_delay: std::time::Duration::from_millis(20),
        ..Behaviour::default()
    });
    // Its response-headers hook answers 403 "denied" instead.
    let wasm = wat_module(
        r#"(import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 64) "denied")
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
           (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
             (drop (call $respond (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 64) (i32.const 6) (i32.const 0) (i32.const 0) (i32.const -1)))
             (i32.const 1))"#,
    );
    let file = dir.path().join("deny-answer.wasm");
    std::fs::write(&file, wasm).unwrap();
    let config = with_plugin(ai_config(&[backend.addr], ""), "deny", &file).replacen(
        "file = ",
        "stream_events = true\nfile = ",
        1,
    );
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let res = crate::openai::post(&gw, "/v1/chat/completions", &crate::openai::chat(true)).await;
    assert_eq!(res.status(), 403);
    assert_eq!(res.text().await.unwrap(), "denied");
    eventually("the generation cancelled", || async {
        backend
            .stats
            .cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            == 1
    })
    .await;
}
