//! Isolation at the edge: one client's request cannot end, slow or grow what
//! other clients share (the backend's batch, the pool's backends, the metrics
//! registry, the plugin engine).

use crate::harness::*;
use crate::openai::{ai_gateway, chat, error_of, events, post};
use gantry_fixture_backend::{Behaviour, Fixture, FAIL_SEQUENCE_MARKER};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn poisoned(stream: bool) -> serde_json::Value {
    json!({"model": "fixture", "stream": stream,
           "messages": [{"role": "user", "content": format!("hello {FAIL_SEQUENCE_MARKER}")}]})
}

#[tokio::test]
async fn a_failed_sequence_is_answered_alone_and_never_ejects_or_retries() {
    let slow = Behaviour {
        tokens: 20,
        inter_token_delay: Duration::from_millis(20),
        ..Behaviour::default()
    };
    let (a, b) = (Fixture::start(slow.clone()), Fixture::start(slow));
    let gw = ai_gateway(&[a.addr, b.addr], "retries = 1").await;
    // A long stream runs while poisoned requests come and go.
    let running = {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        tokio::spawn(async move {
            let res = client.post(url).json(&chat(true)).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.text().await.unwrap()
        })
    };
    for _ in 0..3 {
        let err = error_of(
            post(&gw, "/v1/chat/completions", &poisoned(false)).await,
            500,
        )
        .await;
        assert_eq!(err["code"], "generation_failed", "{err}");
        let res = post(&gw, "/v1/chat/completions", &poisoned(true)).await;
        assert_eq!(res.status(), 200, "headers went out with the first token");
        let text = res.text().await.unwrap();
        let last = events(&text).pop().unwrap();
        assert!(last.contains("generation_failed"), "{text}");
    }
    let text = running.await.unwrap();
    let events = events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"finish_reason\":\"length\"")),
        "{text}"
    );
    assert_eq!(text.matches("tok").count(), 20, "every token arrived");
    // Three poisoned non-streaming requests: tried once each, never elsewhere.
    let calls = a.stats.accepted.load(Ordering::SeqCst) + b.stats.accepted.load(Ordering::SeqCst);
    assert_eq!(calls, 7, "1 stream + 6 poisoned requests, none retried");
    let page = gw.metrics().await;
    let ejections = page
        .lines()
        .filter(|l| {
            l.starts_with("gantry_inference_backend_ejections_total{") && !l.ends_with(" 0")
        })
        .count();
    assert_eq!(ejections, 0, "no backend ejected:\n{page}");
    assert_eq!(
        gw.metric("gantry_inference_retries_total{pool=\"ai\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    for f in [&a, &b] {
        let sample = format!(
            "gantry_inference_backend_healthy{{backend=\"{}\",pool=\"ai\"}}",
            f.addr
        );
        assert_eq!(gw.metric(&sample).await, Some(1.0));
    }
    assert_eq!(gw.admin_get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn sampling_values_that_cannot_be_computed_are_refused_naming_the_parameter() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let cases = [
        ("repetition_penalty", json!(1e-38)),
        ("repetition_penalty", json!(1e-45)),
        ("repetition_penalty", json!(0.0)),
        ("repetition_penalty", json!(1e39)),
        ("temperature", json!(1e39)),
        ("temperature", json!(-1e-45)),
        ("top_p", json!(1e39)),
        ("top_p", json!(-0.0)),
    ];
    for (param, value) in cases {
        let mut body = chat(false);
        body[param] = value.clone();
        let err = error_of(post(&gw, "/v1/chat/completions", &body).await, 400).await;
        assert_eq!(err["param"], param, "{param} = {value}: {err}");
    }
    // Tiny temperatures are greedy, not an error.
    for t in [1e-38, 1e-45, 5e-324] {
        let mut body = chat(false);
        body["temperature"] = json!(t);
        assert_eq!(
            post(&gw, "/v1/chat/completions", &body).await.status(),
            200,
            "{t}"
        );
    }
    assert_eq!(backend.stats.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn client_chosen_model_names_never_become_metric_series() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    // Every outcome once, so the page holds each series a known model can make.
    assert_eq!(
        post(&gw, "/v1/chat/completions", &chat(false))
            .await
            .status(),
        200
    );
    let before = gw.metrics().await.len();
    for i in 0..1000 {
        let model = format!("{i:04}-{}", "m".repeat(2000));
        let body = json!({"model": model, "messages": [{"role": "user", "content": "x"}]});
        let res = post(&gw, "/v1/chat/completions", &body).await;
        assert_eq!(res.status(), 404);
        let body = json!({"model": format!("e{i}"), "input": "x"});
        assert_eq!(post(&gw, "/v1/embeddings", &body).await.status(), 404);
    }
    let page = gw.metrics().await;
    eprintln!(
        "/metrics: {before} bytes before, {} after 2,000 unknown models",
        page.len()
    );
    assert!(
        page.len() < before + 2048,
        "/metrics grew from {before} to {} bytes",
        page.len()
    );
    assert!(
        page.contains("model=\"unknown\""),
        "unknown models are counted"
    );
}

#[tokio::test]
async fn api_posts_must_declare_json_so_a_web_page_cannot_send_them() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let body = chat(false).to_string();
    // What an HTML form or a no-preflight fetch() can send.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
    ] {
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
            let mut req = gw.client.post(gw.url(path)).body(body.clone());
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let err = error_of(req.send().await.unwrap(), 415).await;
            assert_eq!(
                err["code"], "unsupported_media_type",
                "{path} {content_type:?}"
            );
        }
    }
    for ct in ["application/json", "Application/JSON; charset=utf-8"] {
        let res = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{ct}");
    }
    assert_eq!(backend.stats.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn what_a_request_may_carry_is_capped_before_any_backend_sees_it() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(
        &[backend.addr],
        "max_messages = 3\nmax_input_bytes = 100\nmax_embedding_inputs = 2",
    )
    .await;
    let msg = |text: &str| json!({"role": "user", "content": text});
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "fixture", "messages": [msg("a"), msg("b"), msg("c"), msg("d")]}),
            "messages",
            "max_messages",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "fixture", "messages": [msg(&"x".repeat(60)), msg(&"y".repeat(41))]}),
            "messages",
            "max_input_bytes",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "fixture", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "x".repeat(60)}, {"type": "text", "text": "y".repeat(41)}]}]}),
            "messages",
            "max_input_bytes",
        ),
        (
            "/v1/completions",
            json!({"model": "fixture", "prompt": "z".repeat(101)}),
            "prompt",
            "max_input_bytes",
        ),
        (
            "/v1/completions",
            json!({"model": "fixture", "prompt": vec![1; 26]}),
            "prompt",
            "max_input_bytes",
        ),
        (
            "/v1/embeddings",
            json!({"model": "fixture-embed", "input": ["a", "b", "c"]}),
            "input",
            "max_embedding_inputs",
        ),
        (
            "/v1/embeddings",
            json!({"model": "fixture-embed", "input": ["a".repeat(51), "b".repeat(50)]}),
            "input",
            "max_input_bytes",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "fixture", "messages": [msg("a")], "stop": ["s".repeat(65)]}),
            "stop",
            "64 bytes",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "fixture", "messages": [msg("a")], "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
            "at most 4",
        ),
    ];
    for (path, body, param, limit) in cases {
        let err = error_of(post(&gw, path, &body).await, 400).await;
        assert_eq!(err["param"], param, "{path}: {err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(limit), "{path}: {message}");
    }
    assert_eq!(
        backend.stats.accepted.load(Ordering::SeqCst),
        0,
        "no backend call"
    );
    for limit in ["messages", "input_bytes", "embedding_inputs"] {
        let sample = format!("gantry_limit_rejections_total{{limit=\"{limit}\"}}");
        assert!(
            gw.metric(&sample).await.unwrap_or(0.0) >= 1.0,
            "{sample} counted"
        );
    }
    // At the limits: accepted.
    let at = [
        (
            "/v1/chat/completions",
            json!({"model": "fixture", "messages": [msg(&"x".repeat(50)), msg("b"), msg(&"y".repeat(49))]}),
        ),
        (
            "/v1/completions",
            json!({"model": "fixture", "prompt": vec![1; 25]}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "fixture-embed", "input": ["a".repeat(50), "b".repeat(50)]}),
        ),
    ];
    for (path, body) in at {
        assert_eq!(post(&gw, path, &body).await.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn no_backend_address_or_internal_error_text_reaches_a_client() {
    let backend = Fixture::start(Behaviour {
        tokens: 50,
        inter_token_delay: Duration::from_millis(20),
        ..Behaviour::default()
    });
    let addr = backend.addr.to_string();
    let gw = ai_gateway(&[backend.addr], "retries = 0").await;
    let res = post(&gw, "/v1/chat/completions", &chat(true)).await;
    assert_eq!(res.status(), 200);
    for (name, value) in res.headers() {
        let value = value.to_str().unwrap_or("");
        assert!(!value.contains(&addr), "header {name}: {value}");
        assert!(!name.as_str().contains("backend"), "header {name}");
    }
    // The backend dies mid-stream: the error event says nothing about it.
    let mut res = res;
    let first = res.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(backend);
    let mut rest = String::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last = events(&rest).pop().unwrap_or_default();
    assert!(last.contains("\"error\""), "{rest}");
    for leak in [addr.as_str(), "127.0.0.1", "transport", "h2", "tonic"] {
        assert!(!last.contains(leak), "{leak} in {last}");
    }
    // And with no backend left, the answer names nothing internal either.
    let res = post(&gw, "/v1/chat/completions", &chat(false)).await;
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert!(status >= 500, "{status} {text}");
    assert!(
        !text.contains(&addr) && !text.contains("127.0.0.1"),
        "{text}"
    );
}

/// An origin behind route `route` on `/` whose one plugin, `add`, adds
/// `x-seen: yes` to responses; `extra` goes in its `[[routes.plugins]]` entry.
async fn guarded(route: &str, extra: &str) -> (Origin, Gateway, tempfile::TempDir) {
    use crate::plugins::{config, plugin, ADD_HEADERS};
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("o").await;
    let add = plugin(dir.path(), "add", ADD_HEADERS.0, ADD_HEADERS.1);
    let routes = [crate::plugins::route(route, "/", &[("add", &add, extra)])];
    let gw = Gateway::start(&config(origin.addr, &routes)).await;
    (origin, gw, dir)
}

#[tokio::test]
async fn a_busy_plugin_answers_503_and_is_never_skipped_nor_marked_unhealthy() {
    let (origin, gw, _dir) = guarded(
        "guarded",
        "failure = \"open\"\nmax_instances = 2\nmax_idle_instances = 1",
    )
    .await;
    // Two slow requests hold both instances until their responses end.
    let slow = |delay: u64| {
        let (client, url) = (gw.client.clone(), gw.url("/slow"));
        tokio::spawn(async move {
            client
                .get(url)
                .header("x-delay-ms", delay.to_string())
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let held = [slow(1500), slow(1500)];
    eventually("both requests reached the origin", || async {
        origin.state.hits.load(Ordering::SeqCst) >= 2
    })
    .await;
    for _ in 0..10 {
        let res = gw.get("/fast").await;
        assert_eq!(res.status(), 503, "not skipped despite failure = open");
        let body = json(res).await;
        assert_eq!(body["error"]["code"], "plugin_busy", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("all 2 instances (max_instances)"),
            "{message}"
        );
    }
    assert_eq!(
        origin.state.hits.load(Ordering::SeqCst),
        2,
        "nothing got past the busy plugin"
    );
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    // Busy is not a failure: the plugin runs again at once.
    for _ in 0..5 {
        let res = gw.get("/fast").await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-seen"], "yes");
    }
    let busy = "gantry_plugin_limit_hits_total{limit=\"instances\",plugin=\"add\"}";
    assert_eq!(gw.metric(busy).await, Some(10.0));
    let calls = "gantry_plugin_calls_total{hook=\"request\",outcome=\"busy\",plugin=\"add\",route=\"guarded\"}";
    assert_eq!(gw.metric(calls).await, Some(10.0));
}

/// The real backend (SmolLM2 on the CPU) in process, with only the generation
/// model, on an ephemeral port.
async fn real_backend() -> gantry_inference::Backend {
    real_backend_with("").await
}

/// [`real_backend`], with `extra` tables added to its configuration.
pub(crate) async fn real_backend_with(extra: &str) -> gantry_inference::Backend {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let text = gantry_config::backend::EMBEDDED_BACKEND_DEFAULT
        .replace("127.0.0.1:50051", "127.0.0.1:0")
        .replace("\"127.0.0.1:9091\"", "\"off\"")
        + "\n"
        + extra;
    let mut config =
        gantry_config::backend::parse_backend(&text, "backend", &repo.join("config/examples"))
            .unwrap();
    config
        .models
        .retain(|m| m.kind == gantry_config::backend::ModelKind::Generate);
    let backend = gantry_inference::Backend::start(config).await.unwrap();
    backend.ready().await.unwrap();
    backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_sampling_values_never_end_another_clients_stream_on_a_real_backend() {
    let backend = real_backend().await;
    let config = crate::openai::ai_config(&[backend.addr], "")
        .replace("[\"fixture\", \"fixture-embed\"]", "[\"smollm2-135m\"]")
        .replace("max_body_bytes = 4096", "max_body_bytes = 65536");
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    let ask = |extra: serde_json::Value| {
        let mut body = json!({"model": "smollm2-135m", "max_tokens": 2,
                              "messages": [{"role": "user", "content": "Count to ten."}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    // A greedy stream of 32 tokens that no stop can end early.
    let running = {
        let body = ask(json!({"stream": true, "temperature": 0, "max_tokens": 32,
                              "stream_options": {"include_usage": true}}));
        // The real model on two shared cores: more patience than the harness's.
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .unwrap();
        let url = gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            let res = client.post(url).json(&body).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.text().await.unwrap()
        })
    };
    // Every numeric edge, while it runs: each is greedy (200) or refused (400).
    let poisons = [
        json!({"temperature": 1e-38}),
        json!({"temperature": 1e-45}),
        json!({"temperature": 5e-324}),
        json!({"temperature": 1e-45, "top_p": 1e-38, "top_k": 1}),
        json!({"temperature": 2, "top_p": 1e-38}),
        json!({"temperature": 2, "repetition_penalty": 0.01}),
        json!({"temperature": 1, "repetition_penalty": 1e-38}),
        json!({"temperature": 1, "repetition_penalty": 1e-45}),
        json!({"temperature": 1e39}),
        json!({"top_p": 1e39}),
    ];
    for extra in poisons {
        let res = post(&gw, "/v1/chat/completions", &ask(extra.clone())).await;
        let status = res.status().as_u16();
        assert!(
            status == 200 || status == 400,
            "{extra}: {status} {}",
            res.text().await.unwrap()
        );
    }
    let text = running.await.unwrap();
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(
        text.contains("\"completion_tokens\":32"),
        "all its tokens: {text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(gw.admin_get("/readyz").await.status(), 200);
    let ejected = format!(
        "gantry_inference_backend_ejections_total{{backend=\"{}\",pool=\"ai\"}}",
        backend.addr
    );
    assert_eq!(gw.metric(&ejected).await.unwrap_or(0.0), 0.0);
    assert_eq!(
        gw.metric("gantry_inference_retries_total{pool=\"ai\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    backend.shutdown().await.unwrap();
}

/// A proxy-wasm map (`pairs`) as WAT data-string escapes.
fn wat_map(pairs: &[(&str, &str)]) -> (String, usize) {
    let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
    for (k, v) in pairs {
        bytes.extend((k.len() as u32).to_le_bytes());
        bytes.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        bytes.extend(k.as_bytes());
        bytes.push(0);
        bytes.extend(v.as_bytes());
        bytes.push(0);
    }
    (
        bytes.iter().map(|b| format!("\\{b:02x}")).collect(),
        bytes.len(),
    )
}

#[tokio::test]
async fn a_plugins_inference_call_is_cancelled_when_its_client_leaves() {
    use crate::plugins::wat_module;
    let dir = tempfile::tempdir().unwrap();
    // The backend would take 20 s to answer.
    let backend = Fixture::start(Behaviour {
        first_token_delay: Duration::from_secs(20),
        ..Behaviour::default()
    });
    let (map, map_len) = wat_map(&[
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        (":authority", "gantry"),
        ("content-type", "application/json"),
    ]);
    let body = chat(false).to_string();
    let body_wat: String = body.bytes().map(|b| format!("\\{b:02x}")).collect();
    // proxy_http_call("ai", POST /v1/chat/completions, a chat body) and pause.
    let wasm = wat_module(
        r#"(import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 16) "ai")
      (data (i32.const 100) "{map}")
      (data (i32.const 1000) "{body_wat}")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (i32.ne (call $call (i32.const 16) (i32.const 2) (i32.const 100) (i32.const {map_len})
                (i32.const 1000) (i32.const {}) (i32.const 0) (i32.const 0) (i32.const 30000) (i32.const 300))
              (i32.const 0))
          (then unreachable))
        (i32.const 1))"#,
            body.len()
        ),
    );
    let file = dir.path().join("caller.wasm");
    std::fs::write(&file, wasm).unwrap();
    let origin = Origin::start("o").await;
    let text = format!(
        "[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n\
         [[pools]]\nname = \"p\"\nendpoints = [\"{}\"]\n\
         [[inference_pools]]\nname = \"ai\"\nendpoints = [\"{}\"]\nmodels = [\"fixture\"]\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\npath_prefix = \"/\"\n\
         [[routes.plugins]]\nname = \"caller\"\nfile = \"{}\"\nupstreams = [\"ai\"]\n",
        origin.addr,
        backend.addr,
        file.display()
    );
    let gw = Gateway::start(&text).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    // A raw client sends a request and hangs up while the call is out.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    conn.write_all(b"GET /x HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    eventually("the call reached the backend", || async {
        backend.stats.accepted.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(conn);
    eventually("the backend's stream was cancelled", || async {
        backend.stats.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_long_stream_does_not_hold_its_plugins_instance() {
    use crate::plugins::{plugin, CONTINUE};
    let dir = tempfile::tempdir().unwrap();
    let backend = Fixture::start(Behaviour {
        tokens: 30,
        inter_token_delay: Duration::from_millis(50),
        ..Behaviour::default()
    });
    let pass = plugin(dir.path(), "pass", CONTINUE, CONTINUE);
    let config = crate::openai::ai_config(&[backend.addr], "").replace(
        "inference_pools = [\"ai\"]\nmax_body_bytes = 4096\n",
        &format!(
            "inference_pools = [\"ai\"]\nmax_body_bytes = 4096\n\
             [[routes.plugins]]\nname = \"pass\"\nfile = \"{}\"\nmax_instances = 1\n",
            pass.display()
        ),
    );
    let gw = Gateway::start(&config).await;
    gw.wait_backend_healthy("ai", backend.addr).await;
    // Two streams of 1.5 s each, one after the other has started: with the
    // single instance held for the whole stream the second would be refused.
    let mut first = post(&gw, "/v1/chat/completions", &chat(true)).await;
    assert_eq!(first.status(), 200);
    assert!(first.chunk().await.unwrap().is_some());
    let second = post(&gw, "/v1/chat/completions", &chat(true)).await;
    assert_eq!(
        second.status(),
        200,
        "the first stream gave its instance back"
    );
    assert!(second.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    while first.chunk().await.unwrap().is_some() {}
}

#[tokio::test]
async fn bodies_no_plugin_could_be_handed_are_413s_that_never_make_it_unhealthy() {
    let (origin, gw, _dir) = guarded("r", "bytes_per_host_call = 1000").await;
    for _ in 0..20 {
        let res = gw
            .client
            .post(gw.url("/upload"))
            .body("x".repeat(5000))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 413);
    }
    assert_eq!(origin.state.hits.load(Ordering::SeqCst), 0);
    // The plugin still runs: it was never asked to take what it could not.
    let res = gw
        .client
        .post(gw.url("/upload"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-seen"], "yes");
    let page = gw.metrics().await;
    assert!(!page.contains("outcome=\"unhealthy\""), "{page}");
    assert!(!page.contains("outcome=\"error\""), "{page}");
}
