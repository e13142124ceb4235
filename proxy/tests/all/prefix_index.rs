//! The gateway's index of the KV blocks each inference backend holds: fed by
//! the backend's `WatchKvBlocks` stream, bounded, and emptied when the backend
//! goes away.

use crate::harness::*;
use crate::openai::{ai_gateway, post};
use gantry_fixture_backend::{Behaviour, Fixture};
use serde_json::json;

/// A chat whose system message (its role and 50 words) fills three whole
/// blocks of the fixture's one-word tokens.
fn long_chat() -> serde_json::Value {
    let system = "You answer questions about trains. ".repeat(10);
    json!({"model": "fixture", "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "First train?"},
    ]})
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
    eventually("three blocks indexed", || async {
        gw.metric(&sample).await == Some(3.0)
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
