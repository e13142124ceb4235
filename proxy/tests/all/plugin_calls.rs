//! Plugins that call pools: an HTTP pool over the network, and the
//! OpenAI-compatible API in process (the `predict-compat` example serving the
//! seed's `/predict` through the completions API, `api-key-auth` in front of
//! the API).

use crate::harness::*;
use crate::plugins::*;

#[tokio::test]
async fn a_plugin_calls_another_pool_and_answers_with_what_it_got() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("main").await;
    let side = Origin::start("side").await;
    // proxy_http_call("side", {:method GET, :path /side, :authority side}) and
    // pause; the callback answers with the call's body.
    let map = r"\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\05\00\00\00\0a\00\00\00\04\00\00\00:method\00GET\00:path\00/side\00:authority\00side\00";
    let wasm = wat_module(
        r#"(import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_buffer_bytes" (func $buffer (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_send_local_response" (func $respond (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        &format!(
            r#"(data (i32.const 16) "side")
      (data (i32.const 100) "{map}")
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (if (i32.ne (call $call (i32.const 16) (i32.const 4) (i32.const 100) (i32.const 68)
                (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 2000) (i32.const 300))
              (i32.const 0))
          (then unreachable))
        (i32.const 1))
      (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
        (drop (call $buffer (i32.const 4) (i32.const 0) (local.get 3) (i32.const 400) (i32.const 404)))
        (drop (call $respond (i32.const 200) (i32.const 0) (i32.const 0)
          (i32.load (i32.const 400)) (i32.load (i32.const 404)) (i32.const 0) (i32.const 0) (i32.const -1))))"#
        ),
    );
    let file = dir.path().join("caller.wasm");
    std::fs::write(&file, wasm).unwrap();
    let text = format!(
        "{}\n[[pools]]\nname = \"side\"\nendpoints = [\"{}\"]\n",
        config(
            origin.addr,
            &[route(
                "r",
                "/",
                &[("caller", &file, "upstreams = [\"side\"]")]
            )]
        ),
        side.addr
    );
    let gw = Gateway::start(&text).await;
    for _ in 0..3 {
        let res = gw.get("/anything").await;
        assert_eq!(res.status(), 200);
        let body = json(res).await;
        assert_eq!(body["origin"], "side");
        assert_eq!(body["path"], "/side");
        assert_eq!(body["headers"]["host"], "side");
    }
    assert_eq!(
        origin.hits(),
        0,
        "the plugin answered; the route's pool was not asked"
    );
    assert_eq!(side.hits(), 3);
    let sample =
        "gantry_plugin_http_calls_total{plugin=\"caller\",result=\"ok\",upstream=\"side\"}";
    let gw = &gw;
    eventually("calls counted", || async move {
        gw.metric(sample).await == Some(3.0)
    })
    .await;
}

/// The gateway with one inference pool `ai` over `backend`, the API on `/v1` and
/// `predict-compat` on `/predict`.
async fn predict_gateway(backend: std::net::SocketAddr, v1_plugins: &str) -> Gateway {
    let file = example("predict_compat");
    let gw = Gateway::start(&format!(
        "[[listeners]]\nname = \"http\"\naddress = \"{{gateway}}\"\n\
         [[inference_pools]]\nname = \"ai\"\nendpoints = [\"{backend}\"]\nmodels = [\"fixture\"]\n\
         [[routes]]\nname = \"predict\"\npath_prefix = \"/predict\"\ninference_pools = [\"ai\"]\n\
         [[routes.plugins]]\nname = \"predict-compat\"\nfile = \"{}\"\nupstreams = [\"ai\"]\n\
         configuration = {{ upstream = \"ai\", model = \"fixture\" }}\n\
         [[routes]]\nname = \"openai\"\npath_prefix = \"/v1\"\ninference_pools = [\"ai\"]\n{v1_plugins}\n",
        file.display()
    ))
    .await;
    let sample = format!("gantry_inference_backend_healthy{{backend=\"{backend}\",pool=\"ai\"}}");
    eventually("backend healthy", || {
        let (gw, sample) = (&gw, sample.clone());
        async move { gw.metric(&sample).await == Some(1.0) }
    })
    .await;
    gw
}

async fn predict(gw: &Gateway, body: &str) -> (u16, serde_json::Value) {
    let res = gw
        .client
        .post(gw.url("/predict"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, json(res).await)
}

#[tokio::test]
async fn the_predict_compat_example_serves_the_seed_api_through_the_completions_api() {
    let backend = gantry_fixture_backend::Fixture::start(gantry_fixture_backend::Behaviour {
        tokens: 200,
        ..Default::default()
    });
    let gw = predict_gateway(backend.addr, "").await;

    // max_length becomes max_tokens; the completion's text becomes `output`.
    let (status, body) = predict(&gw, r#"{"prompt": "hello", "max_length": 12}"#).await;
    assert_eq!(status, 200, "{body}");
    let expected: String = (0..12).map(|i| format!("tok{i} ")).collect();
    assert_eq!(body, serde_json::json!({ "output": expected }));
    let (status, body) = predict(&gw, r#"{"prompt": "hello"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["output"].as_str().unwrap().split_whitespace().count(),
        50,
        "max_length defaults to 50"
    );

    // Clear 400s naming the field and the range; nothing reaches the backend.
    let before = backend
        .stats
        .accepted
        .load(std::sync::atomic::Ordering::SeqCst);
    for (bad, param, says) in [
        (
            r#"{"prompt": "x", "max_length": 9}"#,
            "max_length",
            "between 10 and 100 (got 9)",
        ),
        (
            r#"{"prompt": "x", "max_length": 101}"#,
            "max_length",
            "between 10 and 100 (got 101)",
        ),
        (
            r#"{"prompt": "x", "max_length": 20.5}"#,
            "max_length",
            "must be an integer",
        ),
        (
            r#"{"prompt": "x", "max_length": "20"}"#,
            "max_length",
            "must be an integer",
        ),
        (r#"{"max_length": 20}"#, "prompt", "prompt is required"),
        (r#"{"prompt": 7}"#, "prompt", "must be a string"),
    ] {
        let (status, body) = predict(&gw, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["param"], param, "{bad}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{bad}: {message}");
    }
    let (status, body) = predict(&gw, "{not json").await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let res = gw.get("/predict").await;
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "POST");
    assert_eq!(
        backend
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        before,
        "refused requests never reach the backend"
    );
    let sample =
        "gantry_plugin_http_calls_total{plugin=\"predict-compat\",result=\"ok\",upstream=\"ai\"}";
    eventually("calls counted", || async {
        gw.metric(sample).await == Some(2.0)
    })
    .await;
}

#[tokio::test]
async fn predict_passes_on_the_pools_own_errors() {
    let mut backend = gantry_fixture_backend::Fixture::start(Default::default());
    let gw = predict_gateway(backend.addr, "").await;
    backend.kill();
    // Once the gateway sees the backend gone, the API answers 503 and /predict
    // passes it on as it is.
    eventually("503 passed on", || async {
        let (status, body) = predict(&gw, r#"{"prompt": "x"}"#).await;
        status == 503 && body["error"]["message"].is_string()
    })
    .await;
}

#[tokio::test]
async fn api_key_auth_guards_the_openai_api() {
    let backend = gantry_fixture_backend::Fixture::start(Default::default());
    let auth = format!(
        "[[routes.plugins]]\nname = \"auth\"\nfile = \"{}\"\nconfiguration = {{ keys = [\"sk-1\"], header = \"authorization\" }}\n",
        example("api_key_auth").display()
    );
    let gw = predict_gateway(backend.addr, &auth).await;
    let body = serde_json::json!({"model": "fixture", "prompt": "hi", "max_tokens": 2});
    let res = gw
        .client
        .post(gw.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = gw
        .client
        .post(gw.url("/v1/completions"))
        .header("authorization", "sk-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(json(res).await["choices"][0]["text"], "tok0 tok1 ");
}
