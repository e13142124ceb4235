//! The official `openai` Python package against the real `gantry serve` (gateway
//! and backend in one process, SmolLM2 and MiniLM on the CPU), on ephemeral ports.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Kills `gantry serve` when the test ends, pass or fail.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The embedded defaults with every address made ephemeral.
fn configs(dir: &Path) -> (PathBuf, PathBuf, std::net::SocketAddr, std::net::SocketAddr) {
    let (gateway, admin, grpc) = (free_addr(), free_addr(), free_addr());
    let models = repo().join("models");
    let backend = gantry_config::backend::EMBEDDED_BACKEND_DEFAULT
        .replace("127.0.0.1:50051", &grpc.to_string())
        .replace("\"127.0.0.1:9091\"", "\"off\"")
        .replace("../../models", models.to_str().unwrap());
    let gw = gantry_config::EMBEDDED_DEFAULT
        .replace("127.0.0.1:8080", &gateway.to_string())
        .replace("127.0.0.1:9090", &admin.to_string())
        .replace("127.0.0.1:50051", &grpc.to_string())
        .replace("../../plugins", repo().join("plugins").to_str().unwrap());
    let (g, b) = (dir.join("gateway.toml"), dir.join("backend.toml"));
    std::fs::write(&g, gw).unwrap();
    std::fs::write(&b, backend).unwrap();
    (g, b, gateway, admin)
}

#[tokio::test]
async fn the_official_openai_client_works_against_gantry_serve() {
    let dir = tempfile::tempdir().unwrap();
    let (gw_config, backend_config, gateway, admin) = configs(dir.path());
    let _serve = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--config"])
            .arg(&gw_config)
            .arg("--backend-config")
            .arg(&backend_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gantry serve starts"),
    );
    let client = client();
    let healthy = format!("http://{admin}/metrics");
    // Models load and warm up (seconds on two cores): wait until the gateway sees
    // the backend serving.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let page = match client.get(&healthy).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if page
            .lines()
            .any(|l| l.starts_with("gantry_inference_backend_healthy{") && l.ends_with(" 1"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backend never became healthy"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let out = tokio::process::Command::new("python3")
        .arg(repo().join("proxy/tests/python/openai_client.py"))
        .arg(format!("http://{gateway}"))
        .output()
        .await
        .expect("python3 runs (scripts/setup.sh installs openai and openapi-spec-validator)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    let chat = &seen["chat"];
    assert!(
        chat["content"].as_str().unwrap().contains("Paris"),
        "{chat}"
    );
    assert!(chat["completion_tokens"].as_u64().unwrap() <= 8);
    let stream = &seen["stream"];
    assert_eq!(
        stream["content"], chat["content"],
        "streamed = whole answer at temperature 0"
    );
    assert!(stream["chunks"].as_u64().unwrap() > 1);
    assert_eq!(stream["completion_tokens"], chat["completion_tokens"]);
    assert_eq!(stream["finish_reason"], chat["finish_reason"]);
    assert!(
        seen["completion"]["text"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{seen}"
    );
    assert_eq!(seen["completion"]["completion_tokens"], 3);
    assert_eq!(seen["embeddings"]["count"], 2);
    assert_eq!(seen["embeddings"]["dims"], 384);
    assert!((seen["embeddings"]["norm"].as_f64().unwrap() - 1.0).abs() < 1e-3);
    assert_eq!(
        seen["models"],
        serde_json::json!(["all-minilm-l6-v2", "smollm2-135m"])
    );
    let bad = &seen["bad_request"];
    assert_eq!(bad["status"], 400);
    assert_eq!(bad["param"], "temperature");
    assert!(
        bad["message"].as_str().unwrap().contains("between 0 and 2"),
        "{bad}"
    );
    assert_eq!(seen["not_found"]["status"], 404);
    assert_eq!(seen["not_found"]["code"], "model_not_found");

    // Every documented limit, just outside: a 400 naming the parameter; at the
    // limit: accepted. [param, keyword, limit, value sent, status, param named]
    let limits = seen["limits"].as_array().unwrap();
    let params: std::collections::BTreeSet<&str> =
        limits.iter().map(|c| c[0].as_str().unwrap()).collect();
    for p in [
        "temperature",
        "top_p",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "repetition_penalty",
    ] {
        assert!(
            params.contains(p),
            "{p} has limits in the schema: {params:?}"
        );
    }
    for case in limits {
        let (param, sent, limit, status) =
            (&case[0], &case[3], &case[2], case[4].as_u64().unwrap());
        if sent == limit && case[1] != "exclusiveMinimum" {
            assert_eq!(
                status, 200,
                "{param} = {sent} is within the documented range: {case}"
            );
        } else {
            assert_eq!(
                status, 400,
                "{param} = {sent} is outside the documented range: {case}"
            );
            assert_eq!(&case[5], param, "{case}");
        }
    }

    // The seed's API works out of the box: POST /predict through predict-compat.
    let predict = |body: &'static str| {
        let client = client.clone();
        async move {
            let res = client
                .post(format!("http://{gateway}/predict"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let (status, body) =
        predict(r#"{"prompt": "The capital of France is", "max_length": 10}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body["output"].as_str().unwrap().is_empty(), "{body}");
    let (status, body) = predict(r#"{"prompt": "x", "max_length": 5}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "max_length");

    // The README's question at default settings gets the right answer: the
    // backend samples with the model's configured defaults ([models.sampling]),
    // not OpenAI's temperature 1, when the request sets none.
    let ask = |extra: Value| {
        let client = client.clone();
        async move {
            let mut body = serde_json::json!({
                "model": "smollm2-135m",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            });
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let res = client
                .post(format!("http://{gateway}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            let answer: Value = res.json().await.unwrap();
            answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(ask(serde_json::json!({})).await);
    }
    let right = answers.iter().filter(|a| a.contains("Paris")).count();
    assert!(right >= 9, "{right} of 10 answers name Paris: {answers:#?}");
    // An explicit temperature still wins: with the same seed, a hot request
    // samples differently from one at the model's defaults.
    let seeded = ask(serde_json::json!({"seed": 7})).await;
    let hot = ask(serde_json::json!({"seed": 7, "temperature": 2.0})).await;
    assert_ne!(seeded, hot, "temperature 2 was applied");
}
