//! A Python grpcio client, generated from the .proto by grpcio-tools, talks to
//! the backend: the contract is usable by clients that did not come from us.

use crate::common::*;
use gantry_config::backend::ModelLimits;
use gantry_inference::Backend;

#[tokio::test]
async fn a_python_grpcio_client_generated_from_the_proto_works() {
    let backend = Backend::start(backend_config(vec![
        generate_model(ModelLimits {
            max_tokens: 256,
            ..ModelLimits::default()
        }),
        embed_model(),
    ]))
    .await
    .unwrap();
    backend.ready().await.unwrap();
    let proto_root = repo().join("proto");
    let script = repo().join("inference/tests/python/client.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&proto_root)
        .arg(backend.addr.to_string())
        .output()
        .await
        .expect("python3 runs (scripts/setup.sh installs grpcio and grpcio-tools)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen["models"],
        serde_json::json!(["all-minilm-l6-v2", "smollm2-135m"])
    );
    assert_eq!(seen["finish_reason"], "FINISH_REASON_LENGTH");
    assert_eq!(seen["completion_tokens"], 5);
    assert_eq!(seen["ids"].as_array().unwrap().len(), 5);
    if real_model() {
        assert!(
            seen["text"].as_str().unwrap().starts_with(" Paris"),
            "{seen}"
        );
    }
    assert_eq!(seen["embedding_len"], 384);
    assert_eq!(seen["error_code"], "INVALID_ARGUMENT");
    assert!(seen["error_message"]
        .as_str()
        .unwrap()
        .contains("sampling.max_tokens must be between 1 and 256"));
    backend.shutdown().await.unwrap();
}
