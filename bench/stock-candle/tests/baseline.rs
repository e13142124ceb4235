//! The baseline decodes what Gantry's engine decodes on the same weights.

use candle_core::{DType, Device};
use gantry_config::backend::Quantization;
use gantry_inference::devtools::hf::export_llama;
use gantry_inference::devtools::synthetic::{write_llama_gguf_with, SyntheticShape};
use gantry_inference::kv_blocks::{KvBlocks, KvLimits};
use gantry_inference::llama::{argmax_rows, Llama};
use stock_candle::Baseline;

#[test]
fn stock_candle_greedy_tokens_match_gantrys_on_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    write_llama_gguf_with(&gguf, SyntheticShape::TINY, 5, 0.5).unwrap();
    let hf = dir.path().join("hf");
    export_llama(&gguf, &hf, DType::F32).unwrap();
    let baseline = Baseline::load(&hf, Device::Cpu, DType::F32).unwrap();
    let prompts = baseline.prompts(3, 12, 1);
    let row = baseline.run(&prompts, 6).unwrap();
    assert_eq!(row.batch, 3);
    assert_eq!(row.first_sequence.len(), 6);
    assert!(
        row.ttft_ms > 0.0 && row.decode_tokens_per_s > 0.0,
        "{row:?}"
    );

    // Gantry's engine, greedy, on the GGUF the export came from.
    let ours = Llama::load(&gguf, &Device::Cpu, Quantization::Bf16).unwrap();
    let mut cache = ours.model.new_cache();
    let mut kv = KvBlocks::new(ours.model.block_layout(), KvLimits::NO_REUSE);
    let mut feed = prompts[0].clone();
    let mut got = Vec::new();
    for _ in 0..6 {
        let logits = ours
            .model
            .forward(&mut kv, &mut [(feed.as_slice(), &mut cache)])
            .unwrap();
        let next = argmax_rows(&logits).unwrap()[0];
        got.push(next);
        feed = vec![next];
    }
    assert_eq!(row.first_sequence, got, "same weights, same greedy tokens");
}
