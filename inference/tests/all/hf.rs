//! The Hugging Face export: stock candle `models::llama` (the layout PyTorch
//! `transformers` loads too) computes what Gantry computes on the GGUF it came from.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama as stock;
use gantry_config::backend::Quantization;
use gantry_inference::devtools::hf::export_llama;
use gantry_inference::devtools::synthetic::{write_llama_gguf_with, SyntheticShape};
use gantry_inference::llama::{argmax_rows, Llama};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn the_hf_export_gives_stock_candle_the_same_logits_as_gantry() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    // Sharp attention, so Q/K order matters to the answer.
    write_llama_gguf_with(&gguf, SyntheticShape::TINY, 11, 0.5).unwrap();
    let hf = dir.path().join("hf");
    export_llama(&gguf, &hf, DType::F32).unwrap();

    let config: stock::LlamaConfig =
        serde_json::from_slice(&std::fs::read(hf.join("config.json")).unwrap()).unwrap();
    let config = config.into_config(false);
    assert_eq!(config.num_hidden_layers, SyntheticShape::TINY.n_layer);
    assert!(!config.tie_word_embeddings);
    let weights =
        candle_core::safetensors::load(hf.join("model.safetensors"), &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    let reference = stock::Llama::load(vb, &config).unwrap();
    let ours = Llama::load(&gguf, &Device::Cpu, Quantization::Bf16).unwrap();

    let prompts: [&[u32]; 3] = [
        &[5, 70, 71, 72, 300],
        &[9],
        &[3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    ];
    for prompt in prompts {
        let mut cache = stock::Cache::new(false, DType::F32, &config, &Device::Cpu).unwrap();
        let input = Tensor::new(prompt, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = reference.forward(&input, 0, &mut cache).unwrap();
        let mut seq = ours.model.new_cache();
        let mut kv = gantry_inference::kv_blocks::KvBlocks::new(
            ours.model.block_layout(),
            gantry_inference::kv_blocks::KvLimits::NO_REUSE,
        );
        let got = ours
            .model
            .forward(&mut kv, &mut [(prompt, &mut seq)])
            .unwrap();
        let (w, g) = (
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let c = cosine(&w, &g);
        // bf16 here against f32 there: ~0.993; a wrong Q/K order gives ~0.2.
        assert!(c > 0.98, "prompt {prompt:?}: cosine {c}");
        assert_eq!(
            argmax_rows(&want).unwrap(),
            argmax_rows(&got).unwrap(),
            "prompt {prompt:?}"
        );
    }
}
