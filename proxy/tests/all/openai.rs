//! The OpenAI-compatible API at the edge, against fixture backends (fake
//! `gantry.inference.v1` servers that stream `tok0 tok1 ...` on a timer, so a test
//! can make one slow, full or dead on purpose).

use crate::harness::*;
use futures_util::StreamExt;
use gantry_fixture_backend::{Behaviour, Fixture};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway with one inference pool `ai` over `backends` (serving `fixture` and
/// `fixture-embed`), the API on `/v1`, and `pool_extra` lines in the pool.
pub(crate) fn ai_config(backends: &[SocketAddr], pool_extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\nh2c = true\n\
         [[inference_pools]]\nname = \"ai\"\nendpoints = [{}]\nmodels = [\"fixture\", \"fixture-embed\"]\n{pool_extra}\n\
         [[routes]]\nname = \"openai\"\npath_prefix = \"/v1\"\ninference_pools = [\"ai\"]\nmax_body_bytes = 4096\n\
         [[routes]]\nname = \"openapi\"\npath_prefix = \"/openapi.json\"\nserve = \"openapi\"\n\
         [[routes]]\nname = \"docs\"\npath_prefix = \"/docs\"\nserve = \"docs\"\n",
        list.join(", ")
    )
}

/// Start a gateway over `backends` and wait until each of them takes traffic.
pub(crate) async fn ai_gateway(backends: &[SocketAddr], pool_extra: &str) -> Gateway {
    let gw = Gateway::start(&ai_config(backends, pool_extra)).await;
    for b in backends {
        gw.wait_backend_healthy("ai", *b).await;
    }
    gw
}

pub(crate) fn chat(stream: bool) -> Value {
    json!({"model": "fixture", "messages": [{"role": "user", "content": "hello there"}], "stream": stream})
}

pub(crate) async fn post(gw: &Gateway, path: &str, body: &Value) -> reqwest::Response {
    gw.client
        .post(gw.url(path))
        .json(body)
        .send()
        .await
        .expect("gateway answers")
}

/// The `data:` payloads of a server-sent event stream.
pub(crate) fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

pub(crate) async fn error_of(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body = json(res).await;
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    body["error"].clone()
}

#[tokio::test]
async fn chat_completion_answers_with_the_generated_text_and_usage() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let res = post(&gw, "/v1/chat/completions", &chat(false)).await;
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = json(res).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], format!("chatcmpl-{id}"));
    assert_eq!(body["model"], "fixture");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    // The fixture's tokens are bytes of `user: hello there\nassistant:`.
    assert_eq!(body["usage"]["prompt_tokens"], 28);
    assert_eq!(body["usage"]["total_tokens"], 36);
    let sample = format!(
        "gantry_inference_requests_total{{backend=\"{}\",model=\"fixture\",status=\"200\"}}",
        backend.addr
    );
    // Counted once the answer is written: the client may ask first.
    eventually("request counted", || {
        let (gw, sample) = (&gw, sample.clone());
        async move { gw.metric(&sample).await == Some(1.0) }
    })
    .await;
    let out = format!(
        "gantry_inference_tokens_total{{backend=\"{}\",direction=\"out\",model=\"fixture\"}}",
        backend.addr
    );
    assert_eq!(gw.metric(&out).await, Some(8.0));
    let ttft = format!(
        "gantry_inference_time_to_first_token_seconds_count{{backend=\"{}\",model=\"fixture\"}}",
        backend.addr
    );
    assert_eq!(gw.metric(&ttft).await, Some(1.0));
}

#[tokio::test]
async fn a_repeated_prefix_is_reported_as_cached_prompt_tokens_as_openai_does() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let system = "You answer questions about trains. ".repeat(10);
    let ask = |question: &str, stream: bool| {
        let mut body = json!({"model": "fixture", "stream": stream, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    };
    let cold = json(post(&gw, "/v1/chat/completions", &ask("First train?", false)).await).await;
    assert_eq!(
        cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{cold}"
    );
    let warm = json(post(&gw, "/v1/chat/completions", &ask("Last train?", false)).await).await;
    let cached = warm["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // The fixture's tokens are bytes: `system: ` and the 350-byte message, a
    // newline and `user: ` are shared, 365 tokens or 22 whole blocks of 16.
    assert_eq!(cached, 352, "{warm}");
    assert!(cached < warm["usage"]["prompt_tokens"].as_u64().unwrap());
    // Streamed, the usage chunk says the same.
    let res = post(&gw, "/v1/chat/completions", &ask("Any train?", true)).await;
    let text = res.text().await.unwrap();
    let events = events(&text);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(
        usage["usage"]["prompt_tokens_details"]["cached_tokens"], 352,
        "{usage}"
    );
}

#[tokio::test]
async fn streamed_chat_sends_each_token_as_it_arrives_then_usage_then_done() {
    let backend = Fixture::start(Behaviour {
        tokens: 4,
        inter_token_delay: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "").await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let res = post(&gw, "/v1/chat/completions", &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    // The first token is here while the backend is still generating the rest.
    assert_eq!(backend.stats.running.load(Ordering::SeqCst), 1);
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events = events(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 tok3 ");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;

    let res = post(
        &gw,
        "/v1/completions",
        &json!({"model": "fixture", "prompt": "once upon", "max_tokens": 3}),
    )
    .await;
    let body = json(res).await;
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "tok0 tok1 tok2 ");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    let res = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "fixture-embed", "input": ["a b", "c"]}),
    )
    .await;
    let body = json(res).await;
    let want = gantry_fixture_backend::fake_embedding("a b");
    let got: Vec<f32> = serde_json::from_value(body["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(got, want);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    // base64 is what the openai clients ask for: little-endian f32 bytes.
    let res = post(
        &gw,
        "/v1/embeddings",
        &json!({"model": "fixture-embed", "input": "a b", "encoding_format": "base64"}),
    )
    .await;
    let body = json(res).await;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, want);

    let body = json(gw.get("/v1/models").await).await;
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fixture", "fixture-embed"]);
    assert_eq!(
        json(gw.get("/v1/models/fixture").await).await["owned_by"],
        "ai"
    );
}

#[tokio::test]
async fn bad_json_is_a_400_without_a_param() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let res = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    let e = error_of(res, 400).await;
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["param"], Value::Null);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("could not parse the JSON"),
        "{e}"
    );
    assert_eq!(backend.stats.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_wrong_type_is_a_400_naming_the_parameter() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let mut body = chat(false);
    body["temperature"] = json!("hot");
    let e = error_of(post(&gw, "/v1/chat/completions", &body).await, 400).await;
    assert_eq!(e["param"], "temperature");
    assert!(
        e["message"].as_str().unwrap().contains("invalid type"),
        "{e}"
    );
    let body = json!({"model": "fixture", "messages": [{"role": "robot", "content": "x"}]});
    let e = error_of(post(&gw, "/v1/chat/completions", &body).await, 400).await;
    assert_eq!(e["param"], "messages[0].role");
    let e = error_of(
        post(&gw, "/v1/chat/completions", &json!({"messages": []})).await,
        400,
    )
    .await;
    assert_eq!(e["param"], "model");
}

#[tokio::test]
async fn out_of_range_values_are_400s_naming_the_parameter_and_the_range() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let cases = [
        ("temperature", json!(2.5), "between 0 and 2"),
        ("top_p", json!(0), "greater than 0 and at most 1"),
        ("n", json!(3), "n must be 1"),
        ("max_tokens", json!(0), "at least 1"),
        ("stop", json!(["a", "b", "c", "d", "e"]), "at most 4"),
        ("presence_penalty", json!(0.5), "not supported"),
        ("repetition_penalty", json!(3), "between 0.01 and 2"),
    ];
    for (param, value, says) in cases {
        let mut body = chat(false);
        body[param] = value;
        let e = error_of(post(&gw, "/v1/chat/completions", &body).await, 400).await;
        assert_eq!(e["param"], param, "{e}");
        assert!(
            e["message"].as_str().unwrap().contains(says),
            "{param}: {e}"
        );
    }
    // Unknown fields are ignored, as OpenAI does.
    let mut body = chat(false);
    body["some_future_field"] = json!({"x": 1});
    assert_eq!(post(&gw, "/v1/chat/completions", &body).await.status(), 200);
}

#[tokio::test]
async fn an_unknown_model_is_a_404_listing_the_available_ones() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let mut body = chat(false);
    body["model"] = json!("gpt-9");
    let e = error_of(post(&gw, "/v1/chat/completions", &body).await, 404).await;
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("gpt-9") && message.contains("fixture, fixture-embed"),
        "{message}"
    );
}

#[tokio::test]
async fn an_oversized_body_is_a_413_before_any_backend_sees_it() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let mut body = chat(false);
    body["messages"][0]["content"] = json!("x".repeat(5000));
    let e = error_of(post(&gw, "/v1/chat/completions", &body).await, 413).await;
    assert!(e["message"].as_str().unwrap().contains("4096 bytes"), "{e}");
    assert_eq!(backend.stats.accepted.load(Ordering::SeqCst), 0);
    let sample = "gantry_limit_rejections_total{limit=\"body_bytes\"}";
    assert_eq!(gw.metric(sample).await, Some(1.0));
}

#[tokio::test]
async fn unknown_paths_and_methods_get_openai_style_errors() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let e = error_of(gw.get("/v1/chat/completions").await, 405).await;
    assert!(e["message"].as_str().unwrap().contains("use POST"), "{e}");
    let e = error_of(gw.get("/v1/nothing").await, 404).await;
    assert_eq!(e["code"], "unknown_url");
}

/// `/docs` rendered by a real browser with every outside request blocked:
/// the reference lists the API's operations from assets the gateway serves.
/// The screenshot is kept in target/test-artifacts/docs.png.
#[tokio::test]
async fn the_docs_page_renders_offline_in_a_real_browser() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let artifacts = repo.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("docs.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::process::Command::new("python3")
        .arg(repo.join("proxy/tests/python/docs_page.py"))
        .arg(format!("http://{}", gw.addr))
        .arg(&shot)
        .output()
        .await
        .expect("python3 runs (scripts/setup.sh installs playwright and chromium)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser failed: {stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["outside"], json!([]), "requests to other origins");
    assert_eq!(
        seen["failed"],
        json!([]),
        "same-origin requests that failed"
    );
    let operations: Vec<&str> = seen["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
    ] {
        assert!(operations.contains(&path), "{path} in {operations:?}");
    }
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "a screenshot"
    );
}

#[tokio::test]
async fn the_openapi_document_and_docs_page_are_served() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    let doc = json(gw.get("/openapi.json").await).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object());
    let res = gw.get("/docs").await;
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = res.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    // Every script, style and image the page names comes from the gateway
    // itself (no CDN: the page works offline), and each is served.
    let refs: Vec<&str> = page
        .split(['"', '\''])
        .filter(|s| [".js", ".css", ".png"].iter().any(|e| s.ends_with(e)))
        .collect();
    assert!(refs.len() >= 3, "{refs:?}");
    for r in &refs {
        assert!(!r.contains("//"), "an outside asset: {r}");
        let res = gw
            .get(&format!("/docs/{}", r.trim_start_matches("./")))
            .await;
        assert_eq!(res.status(), 200, "{r}");
        let kind = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            kind.starts_with("text/") || kind.starts_with("image/"),
            "{r}: {kind}"
        );
    }
    // The page's own copy of the document, which its initializer points at.
    let init = gw
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        init.contains("openapi.json") && !init.contains("//petstore"),
        "{init}"
    );
    assert_eq!(json(gw.get("/docs/openapi.json").await).await, doc);
    assert_eq!(gw.get("/docs/nothing-here.js").await.status(), 404);
    // Raw HTTP/1.1 keeps working after streamed answers on the same connection.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        conn.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
}

#[tokio::test]
async fn http2_clients_stream_and_their_stream_resets_cancel_generation() {
    let backend = Fixture::start(Behaviour {
        tokens: 100,
        inter_token_delay: Duration::from_millis(50),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "").await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let res = h2
        .post(gw.url("/v1/completions"))
        .json(&json!({"model": "fixture", "prompt": "hi", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.version(), reqwest::Version::HTTP_2);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let event: Value =
        serde_json::from_str(&events(std::str::from_utf8(&first).unwrap())[0]).unwrap();
    assert_eq!(event["object"], "text_completion");
    assert_eq!(event["choices"][0]["text"], "tok0 ");
    drop(stream);
    eventually("backend slot freed after RST_STREAM", || async {
        backend.stats.running.load(Ordering::SeqCst) == 0
            && backend.stats.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn the_pools_max_inflight_is_a_429_counted_as_a_limit() {
    let backend = Fixture::start(Behaviour {
        first_token_delay: Duration::from_millis(1500),
        ..Behaviour::default()
    });
    let gw = ai_gateway(&[backend.addr], "max_inflight = 1").await;
    let busy = {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&chat(false))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    eventually("the one slot is taken", || async {
        backend.stats.running.load(Ordering::SeqCst) == 1
    })
    .await;
    let e = error_of(post(&gw, "/v1/chat/completions", &chat(false)).await, 429).await;
    assert!(
        e["message"].as_str().unwrap().contains("max_inflight = 1"),
        "{e}"
    );
    let sample = "gantry_limit_rejections_total{limit=\"inference_inflight\"}";
    assert_eq!(gw.metric(sample).await, Some(1.0));
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(backend.stats.accepted.load(Ordering::SeqCst), 1);
}

/// A call is carried by the runtime that makes it (the gateway's workers), not
/// by the background runtime that watches the backend: a token is read and
/// handed to its request on one runtime. Shown by stopping the background
/// runtime: calls made since go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn calls_run_on_the_callers_runtime_not_the_watchers() {
    use gantry::upstream::InferencePool;
    use gantry_proto::{inference_client::InferenceClient, EmbedRequest};
    let fixture = Fixture::start(Behaviour::default());
    let config = gantry_config::parse(
        &ai_config(&[fixture.addr], "").replace("{gateway}", "127.0.0.1:1"),
        "t.toml",
        std::path::Path::new("."),
    )
    .expect("config parses");
    let background = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let metrics = std::sync::Arc::new(gantry::metrics::Metrics::new());
    let pool = InferencePool::start(
        config.inference_pools[0].clone(),
        None,
        metrics,
        background.handle().clone(),
    );
    let watched = pool.clone();
    eventually("the backend is watched and serving", move || {
        let pool = watched.clone();
        async move { pool.backends().first().is_some_and(|b| b.eligible()) }
    })
    .await;
    let backend = pool.backends()[0].clone();
    let embed = |mut client: InferenceClient<_>| async move {
        client
            .embed(EmbedRequest {
                model: "fixture-embed".into(),
                inputs: vec!["hello".into()],
            })
            .await
    };
    embed(backend.client()).await.expect("a call before");
    background.shutdown_background();
    embed(backend.client())
        .await
        .expect("a call after the background runtime stopped");
}
