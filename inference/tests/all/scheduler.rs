//! The continuous-batching scheduler, driven directly.

use crate::common::*;
use gantry_config::backend::ModelLimits;
use gantry_inference::llama::Llama;
use gantry_inference::scheduler::{Event, Finish, GenerateEngine, Job, SubmitError};
use gantry_inference::sequence::Sampler;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(crate) fn engine(limits: ModelLimits) -> GenerateEngine {
    // Each engine owns its model; loading is quick (about a second).
    let loaded = Llama::load(&model_path(), &device(), quantization()).unwrap();
    GenerateEngine::start(
        "test",
        loaded.model,
        Arc::new(loaded.tokenizer),
        loaded.eos,
        limits,
    )
}

pub(crate) fn greedy(max_tokens: usize) -> Sampler {
    Sampler {
        max_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 0,
        stop: vec![],
        repetition_penalty: 1.0,
    }
}

fn job(prompt: &str, sampler: Sampler) -> (Job, mpsc::UnboundedReceiver<Event>) {
    let (events, rx) = mpsc::unbounded_channel();
    let prompt = model()
        .tokenizer
        .encode(prompt, false)
        .unwrap()
        .get_ids()
        .to_vec();
    (
        Job {
            request_id: "t".into(),
            prompt,
            sampler,
            arrived: Instant::now(),
            deadline: None,
            events,
        },
        rx,
    )
}

/// (text, ids, finish reason, completion tokens)
async fn run(mut rx: mpsc::UnboundedReceiver<Event>) -> (String, Vec<u32>, Finish, usize) {
    let (mut text, mut ids) = (String::new(), Vec::new());
    while let Some(e) = rx.recv().await {
        match e {
            Event::Delta { text: t, ids: i } => {
                text.push_str(&t);
                ids.extend(i);
            }
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => return (text, ids, reason, completion_tokens),
            Event::DeadlineExceeded { .. } => panic!("deadline"),
        }
    }
    panic!("stream closed without finishing");
}

pub(crate) fn limits(max_running: usize, max_queued: usize) -> ModelLimits {
    ModelLimits {
        max_running,
        max_queued,
        ..ModelLimits::default()
    }
}

#[tokio::test]
async fn max_tokens_ends_with_length_and_counts_tokens() {
    let e = engine(limits(4, 4));
    let (j, rx) = job("The capital of France is", greedy(5));
    e.submit(j).unwrap();
    let (_, ids, reason, n) = run(rx).await;
    assert_eq!(reason, Finish::Length);
    assert_eq!(n, 5);
    assert_eq!(ids.len(), 5, "every generated token is reported once");
}

#[tokio::test]
async fn stop_sequences_end_generation_before_the_stop_text() {
    if !real_model() {
        return;
    }
    let e = engine(limits(4, 4));
    // Greedy SmolLM2 continues " Paris.\n\nThe answer is: ..."
    let mut s = greedy(30);
    s.stop = vec!["\n\n".into(), "never-produced".into()];
    let (j, rx) = job("The capital of France is", s);
    e.submit(j).unwrap();
    let (text, _, reason, n) = run(rx).await;
    assert_eq!(reason, Finish::Stop);
    assert_eq!(text, " Paris.");
    assert!(n < 30);
}

#[tokio::test]
async fn sampling_with_a_seed_is_reproducible() {
    let e = engine(limits(4, 8));
    let sampled = |seed| Sampler {
        temperature: 1.0,
        top_p: 0.95,
        top_k: 50,
        seed,
        repetition_penalty: 1.1,
        ..greedy(16)
    };
    let mut runs = Vec::new();
    for seed in [42, 42, 43] {
        let (j, rx) = job("Once upon a time", sampled(seed));
        e.submit(j).unwrap();
        runs.push(run(rx).await.1);
    }
    assert_eq!(runs[0], runs[1], "same seed, same tokens");
    assert_ne!(runs[0], runs[2], "another seed, other tokens");
}

#[tokio::test]
async fn requests_joining_a_running_batch_get_their_solo_tokens_in_shared_steps() {
    let e = engine(limits(8, 8));
    let prompts = [
        "The capital of France is",
        "def add(a, b):",
        "Water boils at",
        "1, 2, 3,",
    ];
    let mut solo = Vec::new();
    for p in prompts {
        let (j, rx) = job(p, greedy(10));
        e.submit(j).unwrap();
        solo.push(run(rx).await.1);
    }
    let steps_before = e.load().borrow().steps;
    // Now together, the later ones arriving while the first ones decode.
    let mut waits = Vec::new();
    for p in prompts {
        let (j, rx) = job(p, greedy(10));
        e.submit(j).unwrap();
        waits.push(tokio::spawn(run(rx)));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut together = Vec::new();
    for w in waits {
        together.push(w.await.unwrap().1);
    }
    assert_eq!(solo, together);
    let steps = e.load().borrow().steps - steps_before;
    // Alone the four take 4 × 10 steps; batched they share steps.
    assert!(steps < 30, "{steps} forward steps for 4 × 10 tokens");
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let e = engine(limits(1, 1));
    let (a, rx_a) = job(COUNTING, greedy(200));
    e.submit(a).unwrap();
    let mut load = e.load();
    while load.borrow().running < 1 {
        load.changed().await.unwrap();
    }
    let (b, _rx_b) = job("Hello", greedy(5));
    e.submit(b).unwrap();
    let (c, _rx_c) = job("Hello", greedy(5));
    let started = Instant::now();
    assert_eq!(
        e.submit(c).unwrap_err(),
        SubmitError::QueueFull { max_queued: 1 }
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused without waiting"
    );
    drop(rx_a);
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_the_batch_within_one_step() {
    let e = engine(limits(2, 2));
    let (a, mut rx) = job(COUNTING, greedy(500));
    e.submit(a).unwrap();
    // Wait for the first token, then hang up.
    assert!(matches!(rx.recv().await, Some(Event::Delta { .. })));
    let mut load = e.load();
    let at_drop = load.borrow().steps;
    drop(rx);
    loop {
        let l = load.borrow_and_update().clone();
        if l.running == 0 {
            assert!(
                l.steps <= at_drop + 1,
                "left after {} steps",
                l.steps - at_drop
            );
            assert_eq!(l.kv_cache_bytes, 0, "its KV cache is freed");
            break;
        }
        tokio::time::timeout(Duration::from_secs(5), load.changed())
            .await
            .expect("load changes")
            .unwrap();
    }
}

#[tokio::test]
async fn a_passed_deadline_ends_the_stream_with_deadline_exceeded() {
    let e = engine(limits(2, 2));
    let (mut j, mut rx) = job(COUNTING, greedy(500));
    j.deadline = Some(Instant::now() + Duration::from_millis(200));
    e.submit(j).unwrap();
    let started = Instant::now();
    loop {
        match rx.recv().await.expect("event") {
            Event::Delta { .. } => continue,
            Event::DeadlineExceeded { completion_tokens } => {
                assert!(completion_tokens < 500);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn the_kv_budget_holds_requests_back_until_memory_frees() {
    let per_token = model().model.kv_bytes_per_token() as u64;
    let (a, rx_a) = job(COUNTING, greedy(40));
    let (b, rx_b) = job(COUNTING, greedy(40));
    // Room for one sequence's prompt and output, not for two.
    let one = (a.prompt.len() + 40) as u64 * per_token;
    let e = engine(ModelLimits {
        kv_cache_budget_bytes: Some(one + one / 2),
        ..limits(4, 4)
    });
    e.submit(a).unwrap();
    e.submit(b).unwrap();
    let mut load = e.load();
    while load.borrow_and_update().running == 0 {
        load.changed().await.unwrap();
    }
    assert_eq!(
        load.borrow().running,
        1,
        "the second does not fit beside the first"
    );
    assert_eq!(e.queued_now(), 1);
    let first = run(rx_a).await;
    let second = run(rx_b).await;
    assert_eq!((first.2, first.3), (Finish::Length, 40));
    assert_eq!(
        second.1, first.1,
        "the held-back request runs once memory frees"
    );
}

#[tokio::test]
async fn a_sequence_whose_sampling_fails_leaves_alone_and_the_batch_goes_on() {
    let e = engine(limits(8, 8));
    let (j, rx) = job(COUNTING, greedy(40));
    e.submit(j).unwrap();
    let (alone, _, _, _) = run(rx).await;

    // The same greedy stream again, with poisoned requests joining its batch.
    // These samplers bypass the server's validation: dividing logits by a
    // subnormal temperature or penalty overflows f32 and the softmax is NaN.
    let (j, mut rx) = job(COUNTING, greedy(40));
    e.submit(j).unwrap();
    assert!(matches!(rx.recv().await, Some(Event::Delta { .. })));
    let poisons = [
        Sampler {
            temperature: 1e-45,
            ..greedy(20)
        },
        Sampler {
            temperature: 1.0,
            repetition_penalty: 1e-38,
            ..greedy(20)
        },
        Sampler {
            temperature: f64::MIN_POSITIVE,
            top_p: 0.5,
            top_k: 5,
            ..greedy(20)
        },
        Sampler {
            temperature: f64::NAN,
            ..greedy(20)
        },
    ];
    let mut poisoned = Vec::new();
    for sampler in poisons {
        let (p, prx) = job("Once upon a time", sampler);
        e.submit(p).unwrap();
        poisoned.push(tokio::spawn(run(prx)));
    }
    let mut failed = 0;
    for p in poisoned {
        let (_, _, reason, _) = p.await.unwrap();
        failed += usize::from(reason == Finish::Failed);
    }
    assert!(failed >= 3, "{failed} of 4 poisoned sequences failed");
    let (mut text, mut n) = (String::new(), 0);
    loop {
        match rx.recv().await.expect("stream goes on") {
            Event::Delta { text: t, ids } => {
                text.push_str(&t);
                n += ids.len();
            }
            Event::Finished {
                reason,
                completion_tokens,
                ..
            } => {
                assert_eq!(reason, Finish::Length);
                assert_eq!(completion_tokens, 40);
                break;
            }
            Event::DeadlineExceeded { .. } => panic!("deadline"),
        }
    }
    assert!(n >= 39, "every token after the first arrives ({n})");
    assert!(
        alone.ends_with(&text),
        "same tokens as alone: {alone:?} vs {text:?}"
    );
    // The engine still serves.
    let (j, rx) = job(COUNTING, greedy(5));
    e.submit(j).unwrap();
    assert_eq!(run(rx).await.2, Finish::Length);
}
