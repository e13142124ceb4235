//! The stock-candle baseline of the GPU benchmark: candle-transformers'
//! `models::llama` as shipped (one forward per step for the whole batch, its own KV
//! cache, no Gantry engine or scheduler) over a Hugging Face export of the weights
//! Gantry serves (`gantry model export-hf`). Greedy decoding of equal-length
//! random prompts; time to first token = prefill + first sample, decode rate =
//! the batch's new tokens after the first over the time they took.

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::llama as stock;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

/// The model and its configuration, loaded once.
pub struct Baseline {
    model: stock::Llama,
    config: stock::Config,
    device: Device,
    dtype: DType,
}

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Sequences decoded together.
    pub batch: usize,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Tokens generated per sequence.
    pub generated_tokens: usize,
    /// Prefill and the first token, milliseconds.
    pub ttft_ms: f64,
    /// New tokens after the first, all sequences, per second.
    pub decode_tokens_per_s: f64,
    /// The greedy tokens of the first sequence (for cross-checks).
    pub first_sequence: Vec<u32>,
}

fn sync(device: &Device) -> anyhow::Result<()> {
    device.synchronize()?;
    Ok(())
}

impl Baseline {
    /// Load `dir` (config.json + model.safetensors) onto `device` in `dtype`.
    pub fn load(dir: &Path, device: Device, dtype: DType) -> anyhow::Result<Baseline> {
        let config: stock::LlamaConfig =
            serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        let config = config.into_config(false);
        let weights = candle_core::safetensors::load(dir.join("model.safetensors"), &device)?;
        let vb = candle_nn::VarBuilder::from_tensors(weights, dtype, &device);
        let model = stock::Llama::load(vb, &config)?;
        Ok(Baseline {
            model,
            config,
            device,
            dtype,
        })
    }

    /// Random prompts: `batch` rows of `len` ids from `seed`.
    pub fn prompts(&self, batch: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let vocab = self.config.vocab_size as u32;
        (0..batch)
            .map(|_| (0..len).map(|_| rng.random_range(3..vocab)).collect())
            .collect()
    }

    /// Greedy-decode `prompts` (equal lengths) for `generate` tokens each.
    pub fn run(&self, prompts: &[Vec<u32>], generate: usize) -> anyhow::Result<Row> {
        anyhow::ensure!(generate >= 2, "generate at least 2 tokens");
        let batch = prompts.len();
        let len = prompts[0].len();
        anyhow::ensure!(
            prompts.iter().all(|p| p.len() == len),
            "prompts must have equal lengths"
        );
        let mut cache = stock::Cache::new(true, self.dtype, &self.config, &self.device)?;
        let flat: Vec<u32> = prompts.iter().flatten().copied().collect();
        sync(&self.device)?;
        let start = Instant::now();
        let input = Tensor::from_vec(flat, (batch, len), &self.device)?;
        let logits = self.model.forward(&input, 0, &mut cache)?;
        let mut next = logits.argmax(candle_core::D::Minus1)?;
        let first: Vec<u32> = next.to_vec1()?;
        let ttft = start.elapsed();
        let mut tokens = vec![first[0]];
        let decode_start = Instant::now();
        for step in 1..generate {
            let input = next.unsqueeze(1)?;
            let logits = self.model.forward(&input, len + step - 1, &mut cache)?;
            next = logits.argmax(candle_core::D::Minus1)?;
            // The host needs the ids each step (a server streams them).
            let ids: Vec<u32> = next.to_vec1()?;
            tokens.push(ids[0]);
        }
        sync(&self.device)?;
        let decode = decode_start.elapsed();
        Ok(Row {
            batch,
            prompt_tokens: len,
            generated_tokens: generate,
            ttft_ms: ttft.as_secs_f64() * 1000.0,
            decode_tokens_per_s: (batch * (generate - 1)) as f64 / decode.as_secs_f64(),
            first_sequence: tokens,
        })
    }
}
