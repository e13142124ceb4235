//! Prefix-aware routing: the gateway's index of the KV blocks each inference
//! backend holds (fed by the backend's `WatchKvBlocks` stream, bounded, emptied
//! when the backend goes away), and picks that send a prompt where its prefix
//! already is.

use crate::harness::*;
use crate::openai::{ai_gateway, post};
use gantry_fixture_backend::{Behaviour, Fixture};
use serde_json::json;
use std::sync::atomic::Ordering;

/// A chat with a long system message. The fixture tokenizes a byte per token
/// and renders `role: content` lines: this one is 388 tokens, 24 whole blocks.
fn chat_with(system: &str, question: &str) -> serde_json::Value {
    json!({"model": "fixture", "max_tokens": 2, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]})
}

fn trains() -> String {
    "You answer questions about trains. ".repeat(10)
}

fn long_chat() -> serde_json::Value {
    chat_with(&trains(), "First train?")
}

fn blocks_sample(backend: std::net::SocketAddr) -> String {
    format!(
        "gantry_inference_backend_prefix_blocks{{backend=\"{backend}\",model=\"fixture\",pool=\"ai\"}}"
    )
}

#[tokio::test]
async fn the_index_follows_what_a_backend_holds_and_forgets_it_when_the_backend_goes() {
    let mut backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "").await;
    assert_eq!(
        post(&gw, "/v1/chat/completions", &long_chat())
            .await
            .status(),
        200
    );
    let sample = blocks_sample(backend.addr);
    eventually("the prompt's 24 blocks indexed", || async {
        gw.metric(&sample).await == Some(24.0)
    })
    .await;
    backend.kill();
    eventually("the dead backend's blocks are forgotten", || async {
        gw.metric(&sample).await == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn the_index_holds_no_more_names_than_its_bound() {
    let backend = Fixture::start(Behaviour::default());
    let gw = ai_gateway(&[backend.addr], "prefix_index_max_blocks = 2").await;
    assert_eq!(
        post(&gw, "/v1/chat/completions", &long_chat())
            .await
            .status(),
        200
    );
    let over = format!(
        "gantry_inference_prefix_index_problems_total{{backend=\"{}\",pool=\"ai\",problem=\"over_limit\"}}",
        backend.addr
    );
    eventually("the names past the bound are counted", || async {
        gw.metric(&over).await == Some(1.0)
    })
    .await;
    assert_eq!(gw.metric(&blocks_sample(backend.addr)).await, Some(2.0));
}

fn picks(reason: &str) -> String {
    format!("gantry_inference_picks_total{{pool=\"ai\",reason=\"{reason}\"}}")
}

#[tokio::test]
async fn a_prompt_goes_to_the_backend_that_holds_its_prefix() {
    let backends: Vec<Fixture> = (0..3)
        .map(|_| Fixture::start(Behaviour::default()))
        .collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let gw = ai_gateway(&addrs, "routing = \"prefix\"").await;
    let accepted = || -> Vec<u64> {
        backends
            .iter()
            .map(|b| b.stats.accepted.load(Ordering::SeqCst))
            .collect()
    };
    // The first requests go by load while the gateway fetches the model's
    // prompt format; then one is picked for its prefix.
    let mut asked = 0;
    eventually("a pick by prefix", || {
        asked += 1;
        let (gw, body) = (&gw, chat_with(&trains(), &format!("Question {asked}?")));
        async move {
            assert_eq!(post(gw, "/v1/chat/completions", &body).await.status(), 200);
            gw.metric(&picks("prefix")).await == Some(1.0)
        }
    })
    .await;
    let before = accepted();
    for i in 0..10 {
        let body = chat_with(&trains(), &format!("Another question {i}?"));
        assert_eq!(post(&gw, "/v1/chat/completions", &body).await.status(), 200);
    }
    let after = accepted();
    let gained: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        gained.iter().filter(|&&n| n > 0).count() == 1 && gained.iter().sum::<u64>() == 10,
        "all ten went to the one backend holding the prefix: {gained:?}"
    );
    assert_eq!(gw.metric(&picks("prefix")).await, Some(11.0));
    let matched = gw
        .metric("gantry_inference_prefix_blocks_total{pool=\"ai\",result=\"matched\"}")
        .await
        .unwrap();
    // Each holds the shared system message: 22 whole blocks before the questions.
    assert!(matched >= 11.0 * 22.0, "{matched} blocks matched");
}

#[tokio::test]
async fn a_busy_prefix_holder_is_passed_over_for_load() {
    let slow = Behaviour {
        tokens: 50,
        inter_token_delay: std::time::Duration::from_millis(20),
        ..Behaviour::default()
    };
    let backends: Vec<Fixture> = (0..2).map(|_| Fixture::start(slow.clone())).collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    // Any extra load at all passes the holder over.
    let gw = ai_gateway(&addrs, "routing = \"prefix\"\nprefix_max_extra_load = 0.0").await;
    let mut asked = 0;
    eventually("a pick by prefix", || {
        asked += 1;
        let (gw, body) = (&gw, chat_with(&trains(), &format!("Question {asked}?")));
        async move {
            let mut body = body;
            body["max_tokens"] = json!(1);
            assert_eq!(post(gw, "/v1/chat/completions", &body).await.status(), 200);
            gw.metric(&picks("prefix")).await == Some(1.0)
        }
    })
    .await;
    // Several at once: the holder is busy after the first, the rest go by load.
    let sends = (0..4).map(|i| {
        let body = chat_with(&trains(), &format!("Busy question {i}?"));
        let gw = &gw;
        async move { post(gw, "/v1/chat/completions", &body).await.status() }
    });
    for status in futures_util::future::join_all(sends).await {
        assert_eq!(status, 200);
    }
    assert!(gw.metric(&picks("imbalance")).await.unwrap_or(0.0) >= 1.0);
}
