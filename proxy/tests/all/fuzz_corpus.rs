//! The `openai_request` fuzz target's seed corpus (proxy/fuzz/corpus), replayed
//! by plain `cargo test` so a crash once found stays fixed.

#[test]
fn the_openai_request_corpus_replays_without_failures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/openai_request");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| gantry::openai::check_body_property(&data));
        assert!(
            outcome.is_ok(),
            "{} fails the openai_request property",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 15, "the seed corpus is in place ({seen} files)");
}

#[test]
fn an_error_quoting_the_clients_input_stays_small() {
    use gantry::openai::{check_body, Endpoint};
    let limits = gantry_config::InputLimits {
        max_messages: 4,
        max_input_bytes: 1 << 20,
        max_embedding_inputs: 4,
    };
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "max_tokens": "9".repeat(100_000)});
    let err = check_body(
        Endpoint::ChatCompletions,
        body.to_string().as_bytes(),
        &limits,
    )
    .unwrap_err();
    assert_eq!(err.status, 400);
    assert_eq!(err.param.as_deref(), Some("max_tokens"));
    assert!(err.body().len() < 1024, "{} bytes", err.body().len());
}
