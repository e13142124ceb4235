//! Prefix reuse: a prompt that starts like an earlier one (finished or still
//! running) takes that prefix's KV blocks and prefills only the rest, and its
//! greedy tokens are exactly those computed without any reuse.

use crate::common::*;
use crate::scheduler::{engine, greedy, limits};
use gantry_config::backend::ModelLimits;
use gantry_inference::scheduler::{Event, GenerateEngine, Job};
use gantry_proto::prefix::KV_BLOCK_TOKENS;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SYSTEM: &str = "You are a careful assistant for a railway company. Answer questions \
    about timetables, tickets and platforms briefly, in plain English, and say so when \
    you do not know. Never invent a train that is not in the timetable.";

/// Submit `prompt` for `max_tokens` greedy tokens; the receiver of its events.
fn submit(e: &GenerateEngine, prompt: &[u32], max_tokens: usize) -> mpsc::UnboundedReceiver<Event> {
    let (events, rx) = mpsc::unbounded_channel();
    e.submit(Job {
        request_id: "prefix".into(),
        prompt: prompt.to_vec(),
        sampler: greedy(max_tokens),
        arrived: Instant::now(),
        deadline: None,
        events,
    })
    .unwrap();
    rx
}

/// (generated ids, cached prompt tokens)
async fn finish(mut rx: mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, usize) {
    let mut ids = Vec::new();
    while let Some(e) = rx.recv().await {
        match e {
            Event::Delta { ids: i, .. } => ids.extend(i),
            Event::Finished { cached_tokens, .. } => return (ids, cached_tokens),
            Event::DeadlineExceeded { .. } => panic!("deadline"),
        }
    }
    panic!("stream closed without finishing");
}

async fn generate(e: &GenerateEngine, prompt: &[u32], max_tokens: usize) -> (Vec<u32>, usize) {
    finish(submit(e, prompt, max_tokens)).await
}

fn without_reuse() -> GenerateEngine {
    engine(ModelLimits {
        prefix_cache_bytes: 0,
        ..limits(8, 8)
    })
}

/// Prompt tokens reuse can cover: whole blocks before the last prompt token.
fn reusable(prompt: &[u32]) -> usize {
    (prompt.len() - 1) / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS
}

#[tokio::test]
async fn a_repeated_prompt_reuses_every_whole_block_and_decodes_the_same_tokens() {
    let prompt = encode(&format!(
        "{SYSTEM}\nQuestion: when is the first train to York?"
    ));
    assert!(
        prompt.len() > 3 * KV_BLOCK_TOKENS,
        "{} tokens",
        prompt.len()
    );
    let reference = generate(&without_reuse(), &prompt, 12).await;
    assert_eq!(reference.1, 0, "nothing reused with prefix_cache_bytes = 0");

    let e = engine(limits(8, 8));
    let first = generate(&e, &prompt, 12).await;
    let again = generate(&e, &prompt, 12).await;
    assert_eq!(
        first,
        (reference.0.clone(), 0),
        "a cold cache reuses nothing"
    );
    assert_eq!(again.1, reusable(&prompt), "a full hit");
    assert_eq!(again.0, reference.0, "same greedy tokens as without reuse");
}

#[tokio::test]
async fn a_prompt_sharing_only_a_prefix_reuses_its_blocks_and_no_more() {
    let a = encode(&format!(
        "{SYSTEM}\nQuestion: when is the first train to York?"
    ));
    let b = encode(&format!(
        "{SYSTEM}\nQuestion: which platform does the slow train to Leeds leave from on \
         Sundays, and is there a lift to it?"
    ));
    let shared = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let shared_blocks = shared / KV_BLOCK_TOKENS * KV_BLOCK_TOKENS;
    assert!(
        shared_blocks >= 2 * KV_BLOCK_TOKENS && shared_blocks < reusable(&b),
        "{shared} tokens shared, {} reusable",
        reusable(&b)
    );
    let reference = generate(&without_reuse(), &b, 12).await;

    let e = engine(limits(8, 8));
    generate(&e, &a, 4).await;
    let (ids, cached) = generate(&e, &b, 12).await;
    assert_eq!(cached, shared_blocks, "a partial hit");
    assert_eq!(ids, reference.0, "same greedy tokens as without reuse");
}

#[tokio::test]
async fn a_newcomer_reuses_the_blocks_of_a_sequence_still_running() {
    let long = encode(&format!(
        "{SYSTEM}\nWrite the timetable from 6am to noon, hour by hour:"
    ));
    let follow = encode(&format!(
        "{SYSTEM}\nWrite the timetable from 6am to noon, hour by hour: and then the evening."
    ));
    let reference = without_reuse();
    let want_long = generate(&reference, &long, 48).await.0;
    let want_follow = generate(&reference, &follow, 12).await.0;

    let e = engine(limits(8, 8));
    let running = submit(&e, &long, 48);
    // Wait until the first sequence decodes: its prompt blocks are named.
    let mut load = e.load();
    while load.borrow_and_update().kv_named_blocks == 0 {
        tokio::time::timeout(Duration::from_secs(30), load.changed())
            .await
            .expect("the first prompt is prefilled")
            .unwrap();
    }
    let joined = submit(&e, &follow, 12);
    let (follow_ids, cached) = finish(joined).await;
    let (long_ids, _) = finish(running).await;
    assert!(
        cached >= reusable(&long) - KV_BLOCK_TOKENS && cached > 0,
        "{cached} of the running prompt's {} tokens reused",
        long.len()
    );
    assert_eq!(
        follow_ids, want_follow,
        "the newcomer decodes as without reuse"
    );
    assert_eq!(long_ids, want_long, "the running sequence is undisturbed");
}

#[tokio::test]
async fn kept_blocks_stay_within_prefix_cache_bytes_and_are_freed_when_no_longer_needed() {
    let m = &model().model;
    let block = m.kv_bytes_per_token() * KV_BLOCK_TOKENS;
    // Room for two kept blocks.
    let e = engine(ModelLimits {
        prefix_cache_bytes: 2 * block as u64,
        ..limits(8, 8)
    });
    let prompt = encode(&format!(
        "{SYSTEM}\nQuestion: when is the first train to York?"
    ));
    generate(&e, &prompt, 4).await;
    // The load is published after the step that finished the request.
    let mut watch = e.load();
    let load = loop {
        let load = watch.borrow_and_update().clone();
        if load.running == 0 {
            break load;
        }
        tokio::time::timeout(Duration::from_secs(30), watch.changed())
            .await
            .expect("the load is published")
            .unwrap();
    };
    assert_eq!(load.kv_kept_bytes, 2 * block, "kept up to the bound");
    assert_eq!(load.kv_cache_bytes, 0, "no sequence uses a block");
    // The two kept are the chain's first two (the deepest go first): still a hit.
    assert_eq!(generate(&e, &prompt, 4).await.1, 2 * KV_BLOCK_TOKENS);
}
